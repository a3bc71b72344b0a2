"""Colour MLP: a per-Gaussian RGB residual driven by the frame's expression, for fine motion-aligned
texture (wrinkles, mouth interior) on top of the generator's static sh0 colour."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ggtalker_jax.models.configs import ColorMLPConfig
from ggtalker_jax.models.layers import small_init


def uv_positional_encoding(uv, num_freqs: int):
    """uv [..., 2] in [0,1] -> [..., 4 * num_freqs]: sin/cos(2^k * pi * uv) for k < num_freqs."""
    freqs = (2.0 ** jnp.arange(num_freqs, dtype=jnp.float32)) * jnp.pi
    angles = uv[..., None, :] * freqs[:, None]  # [..., K, 2]
    enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return enc.reshape(*uv.shape[:-1], 4 * num_freqs)


class ColorMLP(nn.Module):
    """``__call__(feature [..., N, F], expression [..., 53], uv [N, 2] or None) -> rgb residual
    [..., N, 3]`` (float32). Leading dims (e.g. frames) of ``feature`` and ``expression`` broadcast;
    ``expression`` is broadcast over the N Gaussians. ``uv`` is required iff
    ``config.num_uv_freqs > 0``. The last layer starts tiny, so the residual starts near 0.
    """

    config: ColorMLPConfig

    @nn.compact
    def __call__(self, feature, expression, uv=None):
        cfg = self.config
        if feature.ndim < 2 or feature.shape[-1] != cfg.feature_dim:
            raise ValueError(f"ColorMLP feature: expected [..., N, {cfg.feature_dim}], got "
                             f"{feature.shape}")
        if expression.shape[-1] != cfg.expr_dim:
            raise ValueError(f"ColorMLP expression: expected [..., {cfg.expr_dim}], got "
                             f"{expression.shape}")
        n = feature.shape[-2]
        lead = jnp.broadcast_shapes(feature.shape[:-2], expression.shape[:-1])
        parts = [jnp.broadcast_to(feature, (*lead, n, cfg.feature_dim)),
                 jnp.broadcast_to(expression[..., None, :], (*lead, n, cfg.expr_dim))]
        if cfg.num_uv_freqs:
            if uv is None or uv.shape != (n, 2):
                raise ValueError(f"ColorMLP uv: expected [{n}, 2] UV coords (num_uv_freqs="
                                 f"{cfg.num_uv_freqs}), got {None if uv is None else uv.shape}")
            enc = uv_positional_encoding(uv.astype(jnp.float32), cfg.num_uv_freqs)
            parts.append(jnp.broadcast_to(enc, (*lead, n, enc.shape[-1])))
        x = jnp.concatenate(parts, axis=-1).astype(cfg.dtype)
        for i in range(cfg.num_layers):
            x = nn.relu(nn.Dense(cfg.hidden_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                 name=f"hidden{i}")(x))
        x = nn.Dense(3, kernel_init=small_init(cfg.last_layer_scale),
                     bias_init=nn.initializers.zeros, dtype=cfg.dtype,
                     param_dtype=cfg.param_dtype, name="out")(x)
        return x.astype(jnp.float32)
