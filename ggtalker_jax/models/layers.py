"""Building blocks shared by the UNets: conv + BatchNorm + ReLU blocks, resize-upsampling, and the
additive attention gate of Oktay et al. 2018 ("Attention U-Net")."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def check_array(x, name: str, ndim: int, last_dim: int | None = None) -> None:
    """Raise a ValueError naming ``name`` when ``x`` has the wrong rank or channel count."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != ndim:
        raise ValueError(f"{name}: expected an array of rank {ndim}, got shape {shape}")
    if last_dim is not None and shape[-1] != last_dim:
        raise ValueError(f"{name}: expected last dimension {last_dim}, got shape {shape}")


class ConvBNReLU(nn.Module):
    """3x3 conv (given stride) -> BatchNorm -> ReLU.  [B,H,W,C] -> [B,H/stride,W/stride,features]."""

    features: int
    stride: int = 1
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (3, 3), strides=(self.stride, self.stride), padding=1,
                    use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return nn.relu(x)


class DoubleConv(nn.Module):
    """Two ConvBNReLU; the first one carries the stride.  [B,H,W,C] -> [B,H/s,W/s,features]."""

    features: int
    stride: int = 1
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        kw = dict(bn_momentum=self.bn_momentum, dtype=self.dtype, param_dtype=self.param_dtype)
        x = ConvBNReLU(self.features, self.stride, **kw)(x, train)
        return ConvBNReLU(self.features, 1, **kw)(x, train)


def unet_encoder(x, widths, train: bool, **kw) -> list:
    """The contracting path of the generator's and the inpainter's UNets: one `DoubleConv` per width
    (stride 1 first, then 2), named `down{level}`. Call it inside the parent's `nn.compact` method, whose
    submodules these become. x [B, H, W, C] -> skips, the output of every level ([B, H / 2^l, W / 2^l,
    widths[l]]); the last one is the bottleneck."""
    skips = []
    for level, width in enumerate(widths):
        x = DoubleConv(width, stride=1 if level == 0 else 2, name=f"down{level}", **kw)(x, train)
        skips.append(x)
    return skips


class UpConv(nn.Module):
    """Nearest x2 upsampling then ConvBNReLU (no transposed-conv checkerboard).
    [B,H,W,C] -> [B,2H,2W,features]."""

    features: int
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="nearest")
        return ConvBNReLU(self.features, 1, self.bn_momentum, self.dtype, self.param_dtype)(x, train)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): skip * sigmoid(psi(relu(Wx skip + Wg gate))).

    skip [B,H,W,Cx] (encoder feature), gate [B,H,W,Cg] (upsampled decoder feature, same H,W)
    -> (gated skip [B,H,W,Cx], attention coefficients [B,H,W,1] in (0,1)).
    """

    inter_features: int
    bn_momentum: float = 0.9
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, skip, gate, train: bool):
        def conv_bn(x, features, name):
            x = nn.Conv(features, (1, 1), use_bias=True, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"{name}_conv")(x)
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                                dtype=self.dtype, param_dtype=self.param_dtype,
                                name=f"{name}_bn")(x)

        theta = conv_bn(skip, self.inter_features, "theta_x")
        phi = conv_bn(gate, self.inter_features, "phi_g")
        alpha = nn.sigmoid(conv_bn(nn.relu(theta + phi), 1, "psi"))
        return skip * alpha, alpha


def small_init(scale: float):
    """Kernel init with std ~ ``scale`` / sqrt(fan_in): nonzero (so every earlier layer gets a
    gradient) but small (so the output starts near its bias)."""
    return nn.initializers.variance_scaling(scale ** 2, "fan_in", "truncated_normal")
