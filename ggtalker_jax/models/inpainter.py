"""Body Inpainter: a UNet (stride-1 stem, 4 downsampling and 4 upsampling levels, BatchNorm) that
blends the rendered head with the original frame whose head region is masked out.

Output convention (residual over a composite): the renderer's head RGB is premultiplied by its alpha
(gsplat convention: rendered over a black background), so the naive composite is
``composite = head_rgb + (1 - alpha) * masked_frame``. The network predicts a residual in logit space:
``frame = sigmoid(logit(clip(composite, eps, 1 - eps)) + residual)``. The output is always in (0,1) and,
because the last conv starts near zero, equals the composite at init; training only has to learn the
seam, the neck/shoulders and whatever the head mask hid.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ggtalker_jax.models.configs import InpainterConfig
from ggtalker_jax.models.layers import DoubleConv, UpConv, check_array, small_init, unet_encoder

_EPS = 1e-4


class BodyInpainter(nn.Module):
    """``__call__(head_rgb [B,H,W,3], head_alpha [B,H,W,1], head_features [B,H,W,Fr] or None,
    masked_frame [B,H,W,3], head_mask [B,H,W,1], train) -> frame [B,H,W,3]`` in (0,1), float32.

    H and W must be divisible by 16. ``head_features`` may be None when Fr = 0.
    """

    config: InpainterConfig

    @nn.compact
    def __call__(self, head_rgb, head_alpha, head_features, masked_frame, head_mask,
                 train: bool = False):
        cfg = self.config
        check_array(head_rgb, "BodyInpainter head_rgb", 4, 3)
        b, h, w, _ = head_rgb.shape
        for name, arr, ch in (("head_alpha", head_alpha, 1), ("masked_frame", masked_frame, 3),
                              ("head_mask", head_mask, 1)):
            check_array(arr, f"BodyInpainter {name}", 4, ch)
            if arr.shape[:3] != (b, h, w):
                raise ValueError(f"BodyInpainter {name}: shape {arr.shape} does not match head_rgb "
                                 f"{head_rgb.shape} in [B,H,W]")
        if cfg.render_feature_dim:
            check_array(head_features, "BodyInpainter head_features", 4, cfg.render_feature_dim)
            feats = [head_features]
        elif head_features is not None and head_features.shape[-1] != 0:
            raise ValueError("BodyInpainter head_features: config.render_feature_dim is 0, pass None")
        else:
            feats = []
        if h % 16 or w % 16:
            raise ValueError(f"BodyInpainter: H and W must be divisible by 16, got {head_rgb.shape}")

        composite = head_rgb + (1.0 - head_alpha) * masked_frame
        x = jnp.concatenate([head_rgb, head_alpha, *feats, masked_frame, head_mask], axis=-1)
        x = x.astype(cfg.dtype)

        kw = dict(bn_momentum=cfg.bn_momentum, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        skips = unet_encoder(x, cfg.widths, train, **kw)
        x = skips.pop()
        for level in range(3, -1, -1):
            width = cfg.widths[level]
            up = UpConv(width, name=f"up{level}", **kw)(x, train)
            x = DoubleConv(width, name=f"fuse{level}", **kw)(
                jnp.concatenate([skips[level], up], axis=-1), train)
        residual = nn.Conv(3, (1, 1), kernel_init=small_init(cfg.last_layer_scale),
                           bias_init=nn.initializers.zeros, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, name="head")(x).astype(jnp.float32)

        c = jnp.clip(composite.astype(jnp.float32), _EPS, 1.0 - _EPS)
        return nn.sigmoid(jnp.log(c) - jnp.log1p(-c) + residual)
