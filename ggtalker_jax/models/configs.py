"""Configs of the Flax networks: frozen dataclasses, a small (test) and a paper-size preset.

All modules compute in ``dtype`` (``jnp.float32`` or ``jnp.bfloat16``) and keep their parameters in
``param_dtype`` (float32), so a bf16 forward pass needs no separate checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from ggtalker_jax.constants import EXPR_DIM  # 50 expression + 3 jaw pose: the audio -> geometry interface

Dtype = Any


@dataclasses.dataclass(frozen=True)
class A2EConfig:
    """Audio-to-expression diffusion transformer.

    expr_dim: size of one frame of expression (53).
    audio_dim: Da, per-frame audio feature size (320 = 4 log-mel frames x 80 mels; 768/1024/1280 for
      precomputed HuBERT / Wav2Vec features).
    audio_proj_dim: audio features are projected to this width first (paper: 512).
    model_dim, num_layers, num_heads, mlp_dim: transformer sizes (paper: 512 wide, 8 layers).
    num_styles: rows of the per-identity style table (row 0 = generic style); style_dim: its width (64).
    audio_window: each motion frame cross-attends to audio frames within +-audio_window of itself.
    num_train_steps: diffusion steps the model is trained with (timestep embedding range).
    """

    expr_dim: int = EXPR_DIM
    audio_dim: int = 320
    audio_proj_dim: int = 512
    model_dim: int = 512
    num_layers: int = 8
    num_heads: int = 8
    mlp_dim: int = 2048
    num_styles: int = 256
    style_dim: int = 64
    audio_window: int = 4
    dropout: float = 0.1
    num_train_steps: int = 1000
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if self.model_dim % self.num_heads:
            raise ValueError(f"A2EConfig: model_dim={self.model_dim} must be divisible by "
                             f"num_heads={self.num_heads}")
        if self.num_styles < 1:
            raise ValueError("A2EConfig: num_styles must be >= 1 (row 0 is the generic style)")


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Attention-UNet Identity-Gaussian Generator.

    resolution: R, the output UV map is R x R (paper: 512 -> 262,144 Gaussians). The input is also
      R x R: the first of the 5 encoder ("downsampling") levels is a stride-1 stem, the other 4 halve
      the resolution, so the bottleneck is R/16 and 4 upsampling levels with 4 attention gates bring
      it back to R.
    in_channels: input channels (default 7 = reference RGB unwrapped to UV 3 + UV position map 3 +
      UV valid mask 1).
    widths: channels of the 5 encoder levels.
    feature_dim: F, per-Gaussian feature channels handed to the colour MLP.
    max_offset: offsets are tanh(.) * max_offset (units of the local triangle frame).
    base_scale / max_log_scale: scale = base_scale * exp(max_log_scale * tanh(.)) (units of the
      local triangle size).
    init_opacity: opacity at zero pre-activation is sigmoid(logit(init_opacity)) = init_opacity.
    """

    resolution: int = 512
    in_channels: int = 7
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    feature_dim: int = 16
    max_offset: float = 0.5
    base_scale: float = 0.5
    max_log_scale: float = 3.0
    init_opacity: float = 0.9
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if len(self.widths) != 5:
            raise ValueError(f"GeneratorConfig: widths must have 5 entries (5 encoder levels), "
                             f"got {self.widths}")
        if self.resolution % 16:
            raise ValueError(f"GeneratorConfig: resolution={self.resolution} must be divisible by 16 "
                             "(4 stride-2 levels)")


@dataclasses.dataclass(frozen=True)
class ColorMLPConfig:
    """Per-Gaussian colour residual MLP.

    feature_dim: F (must match GeneratorConfig.feature_dim); hidden_dim, num_layers: hidden sizes.
    num_uv_freqs: frequencies of the sin/cos positional encoding of UV coordinates (0 = no UV input).
    last_layer_scale: std-ish scale of the last layer's init, so the residual starts near 0.
    """

    feature_dim: int = 16
    expr_dim: int = EXPR_DIM
    hidden_dim: int = 64
    num_layers: int = 2
    num_uv_freqs: int = 4
    last_layer_scale: float = 1e-3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32


@dataclasses.dataclass(frozen=True)
class InpainterConfig:
    """Body Inpainter UNet: stride-1 stem + 4 stride-2 downsampling levels + 4 upsampling levels.

    render_feature_dim: Fr, rendered feature channels fed in besides RGB and alpha (may be 0).
    widths: channels of the stem and the 4 downsampling levels.
    The network is fully convolutional: it runs at the avatar's image size (any multiple of 16).
    last_layer_scale: init scale of the output conv, so the output starts at the composite.
    """

    render_feature_dim: int = 0
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    last_layer_scale: float = 1e-3
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if len(self.widths) != 5:
            raise ValueError(f"InpainterConfig: widths must have 5 entries (stem + 4 downsampling "
                             f"levels), got {self.widths}")

    @property
    def in_channels(self) -> int:
        return 3 + 1 + self.render_feature_dim + 3 + 1


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
    a2e: A2EConfig
    generator: GeneratorConfig
    color_mlp: ColorMLPConfig
    inpainter: InpainterConfig


def _with_dtype(cfg: ModelsConfig, dtype) -> ModelsConfig:
    return ModelsConfig(*(dataclasses.replace(getattr(cfg, f.name), dtype=dtype)
                          for f in dataclasses.fields(cfg)))


def paper_config(dtype: Dtype = jnp.float32) -> ModelsConfig:
    """Paper-size networks: 512 UV output (262,144 Gaussians), 512-wide 8-layer A2E, 512 frames."""
    cfg = ModelsConfig(A2EConfig(), GeneratorConfig(), ColorMLPConfig(), InpainterConfig())
    return _with_dtype(cfg, dtype)


def small_config(dtype: Dtype = jnp.float32) -> ModelsConfig:
    """Tiny networks for tests and CPU smoke runs: 32 px maps, 2-layer 32-wide A2E."""
    cfg = ModelsConfig(
        a2e=A2EConfig(audio_dim=320, audio_proj_dim=32, model_dim=32, num_layers=2, num_heads=2,
                      mlp_dim=64, num_styles=8, style_dim=8, audio_window=2, num_train_steps=50),
        generator=GeneratorConfig(resolution=32, widths=(4, 8, 8, 16, 16), feature_dim=4),
        color_mlp=ColorMLPConfig(feature_dim=4, hidden_dim=16, num_layers=2, num_uv_freqs=2),
        inpainter=InpainterConfig(render_feature_dim=2, widths=(4, 8, 8, 16, 16)),
    )
    return _with_dtype(cfg, dtype)


def get_config(name: str, dtype: Dtype = jnp.float32) -> ModelsConfig:
    """'paper' or 'small'."""
    presets = {"paper": paper_config, "small": small_config}
    if name not in presets:
        raise ValueError(f"unknown models config {name!r}; choose one of {sorted(presets)}")
    return presets[name](dtype)
