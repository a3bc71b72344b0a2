"""Identity-Gaussian Generator: an Attention-UNet that maps a reference image unwrapped into the head
model's UV layout to a UV map of Gaussian parameters (one Gaussian per texel).

Architecture (supplementary Sec. 2.1, "5 downsampling layers, 4 upsampling layers, 4 attention
gates"; Oktay et al. 2018): 5 encoder levels, the first a stride-1 stem at full resolution R, the
other four each halve the resolution (3x3 stride-2 conv + BN + ReLU, 3x3 conv + BN + ReLU); the
bottleneck is R/16. Each of the 4 decoder levels upsamples x2 (nearest + conv), gates the encoder skip
of the same resolution with an additive attention gate driven by the upsampled decoder feature, and
fuses both with a double conv. A 1x1 head outputs the raw Gaussian channels. So the input and output
resolution are both R (512 at paper size -> 262,144 Gaussians); this keeps the paper-size forward pass
around a few GiB instead of needing a 1024 px input.

Input channels (default 7, ``GeneratorConfig.in_channels``): reference RGB unwrapped to UV (3, in
[0,1]), canonical mesh position per texel (3), UV valid mask (1).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from ggtalker_jax.models.configs import GeneratorConfig
from ggtalker_jax.models.layers import AttentionGate, DoubleConv, UpConv, check_array, small_init, unet_encoder

SH_C0 = 0.28209479177387814  # 0th-order real spherical-harmonics constant.

# Raw channels of the output head, in order.
GAUSSIAN_CHANNELS = (("offset", 3), ("scale", 3), ("rotation", 4), ("opacity", 1), ("sh0", 3))


def sh0_to_rgb(sh0):
    """0th-order SH coefficients [..., 3] -> RGB [..., 3]: 0.5 + SH_C0 * sh0 (3DGS convention)."""
    return 0.5 + SH_C0 * sh0


def rgb_to_sh0(rgb):
    """Inverse of ``sh0_to_rgb``: RGB [..., 3] -> sh0 [..., 3]."""
    return (rgb - 0.5) / SH_C0


class IdentityGaussianGenerator(nn.Module):
    """Attention-UNet. ``__call__(uv_input [B,R,R,Cin], train) -> dict`` of float32 UV maps:

    - ``offset``   [B,R,R,3]: position offset in the triangle's local frame, tanh(.) * max_offset.
    - ``scale``    [B,R,R,3]: positive, base_scale * exp(max_log_scale * tanh(.)), units of the local
      triangle size.
    - ``rotation`` [B,R,R,4]: unit quaternion wxyz, biased to identity at init.
    - ``opacity``  [B,R,R,1]: sigmoid, in (0,1), about ``init_opacity`` at init.
    - ``sh0``      [B,R,R,3]: 0th-order SH colour (RGB = sh0_to_rgb(sh0)).
    - ``feature``  [B,R,R,F]: features for the colour MLP.

    With ``train=True`` call ``apply(..., mutable=["batch_stats"])``.
    """

    config: GeneratorConfig

    @nn.compact
    def __call__(self, uv_input, train: bool = False):
        cfg = self.config
        check_array(uv_input, "IdentityGaussianGenerator uv_input", 4, cfg.in_channels)
        if uv_input.shape[1] % 16 or uv_input.shape[2] % 16:
            raise ValueError(f"IdentityGaussianGenerator uv_input: height and width must be "
                             f"divisible by 16, got shape {uv_input.shape}")
        kw = dict(bn_momentum=cfg.bn_momentum, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        x = uv_input.astype(cfg.dtype)

        skips = unet_encoder(x, cfg.widths, train, **kw)

        x = skips.pop()
        for level in range(3, -1, -1):
            width = cfg.widths[level]
            up = UpConv(width, name=f"up{level}", **kw)(x, train)
            gated, _ = AttentionGate(max(width // 2, 1), name=f"gate{level}", **kw)(
                skips[level], up, train)
            x = DoubleConv(width, name=f"fuse{level}", **kw)(
                jnp.concatenate([gated, up], axis=-1), train)

        num_raw = sum(c for _, c in GAUSSIAN_CHANNELS) + cfg.feature_dim
        raw = nn.Conv(num_raw, (1, 1), kernel_init=small_init(0.1), bias_init=nn.initializers.zeros,
                      dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="head")(x)
        raw = raw.astype(jnp.float32)

        out, start = {}, 0
        for name, count in GAUSSIAN_CHANNELS + (("feature", cfg.feature_dim),):
            out[name] = raw[..., start:start + count]
            start += count
        return _activate(out, cfg)


def _activate(raw: dict, cfg: GeneratorConfig) -> dict:
    """Bound the raw head outputs into valid Gaussian parameters (all float32)."""
    quat = raw["rotation"] + jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32)
    quat = quat / jnp.sqrt(jnp.sum(quat * quat, axis=-1, keepdims=True) + 1e-12)
    opacity_bias = math.log(cfg.init_opacity / (1.0 - cfg.init_opacity))
    return {
        "offset": jnp.tanh(raw["offset"]) * cfg.max_offset,
        "scale": cfg.base_scale * jnp.exp(cfg.max_log_scale * jnp.tanh(raw["scale"])),
        "rotation": quat,
        "opacity": nn.sigmoid(raw["opacity"] + opacity_bias),
        "sh0": raw["sh0"],
        "feature": raw["feature"],
    }
