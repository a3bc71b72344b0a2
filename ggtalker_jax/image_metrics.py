"""Image quality measures, pure JAX and differentiable: PSNR, SSIM and D-SSIM.

They take images ``[..., H, W, C]`` with values in ``[0, max_val]`` and reduce over ``H, W, C`` to
``[...]``. Training losses (`train.losses`) and evaluation (`eval.metrics`) both use these, so the SSIM a
model is trained on is the SSIM it is judged by.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_float(x: Any) -> jax.Array:
    """Array in a floating dtype (keeps float64 under x64, casts ints/bools to float32)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _check_image_pair(a: jax.Array, b: jax.Array, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 3:
        raise ValueError(f"{name}: images must be [..., H, W, C], got shape {a.shape}")


def psnr(a: jax.Array, b: jax.Array, max_val: float = 1.0, mask: jax.Array | None = None) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image.

    Args:
      a, b: images ``[..., H, W, C]`` with values in ``[0, max_val]``.
      max_val: peak value (1.0 for float images, 255 for uint8 ranges).
      mask: optional weights ``[..., H, W]`` or ``[..., H, W, 1]`` (e.g. a face mask); the MSE is the
        mask-weighted mean over pixels and channels. An all-zero mask gives NaN.
    Returns:
      ``[...]`` PSNR in dB; ``inf`` where the images are identical (on the mask).
    """
    a = _as_float(a)
    b = _as_float(b)
    _check_image_pair(a, b, "psnr")
    sq = jnp.square(a - b)
    if mask is None:
        mse = jnp.mean(sq, axis=(-3, -2, -1))
    else:
        mask = _as_float(mask)
        if mask.ndim == a.ndim - 1:
            mask = mask[..., None]
        if mask.shape[-3:-1] != a.shape[-3:-1] or mask.shape[-1] != 1:
            raise ValueError(f"psnr: mask must be [..., H, W] or [..., H, W, 1] matching images "
                             f"{a.shape}, got {mask.shape}")
        mask = jnp.broadcast_to(mask, a.shape[:-1] + (1,))
        num = jnp.sum(sq * mask, axis=(-3, -2, -1))
        den = jnp.sum(mask, axis=(-3, -2, -1)) * a.shape[-1]
        mse = num / den
    return 10.0 * jnp.log10(max_val**2 / mse)


def _gaussian_kernel_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian ``[size]`` (the taps scipy.ndimage.gaussian_filter uses, truncate=3.5)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Separable 'valid' filtering of ``[B, H, W, C]`` over H and W -> ``[B, H-k+1, W-k+1, C]``."""
    k = kernel.shape[0]
    c = x.shape[-1]
    dn = ("NHWC", "HWIO", "NHWC")
    kh = jnp.tile(kernel.reshape(k, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(kernel.reshape(1, k, 1, 1), (1, 1, 1, c))
    x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
    return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def ssim_map(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Local SSIM map (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03.

    Uses population (not sample) covariances, like scikit-image with ``gaussian_weights=True,
    use_sample_covariance=False``. Only windows fully inside the image are kept (the region
    scikit-image averages after cropping its border).

    Args:
      a, b: ``[..., H, W, C]`` with ``H, W >= 11``.
    Returns:
      ``[..., H-10, W-10, C]`` SSIM values.
    """
    a = _as_float(a)
    b = _as_float(b)
    _check_image_pair(a, b, "ssim")
    h, w, c = a.shape[-3:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    batch = a.shape[:-3]
    a4 = a.reshape((-1, h, w, c))
    b4 = b.reshape((-1, h, w, c))
    kernel = jnp.asarray(_gaussian_kernel_1d(), a.dtype)
    # One conv over the five stacked statistics' inputs.
    stacked = jnp.concatenate([a4, b4, a4 * a4, b4 * b4, a4 * b4], axis=-1)
    mu_a, mu_b, e_aa, e_bb, e_ab = jnp.split(_filter_valid(stacked, kernel), 5, axis=-1)
    var_a = e_aa - mu_a * mu_a
    var_b = e_bb - mu_b * mu_b
    cov_ab = e_ab - mu_a * mu_b
    c1 = (SSIM_K1 * max_val) ** 2
    c2 = (SSIM_K2 * max_val) ** 2
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov_ab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    smap = num / den
    return smap.reshape(batch + smap.shape[1:])


def ssim(a: jax.Array, b: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Mean SSIM per image: ``[..., H, W, C] -> [...]`` (1.0 for identical images).

    Matches ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=max_val)``.
    """
    return jnp.mean(ssim_map(a, b, max_val), axis=(-3, -2, -1))


def dssim_loss(pred: jax.Array, target: jax.Array, max_val: float = 1.0) -> jax.Array:
    """Structural dissimilarity loss ``(1 - SSIM) / 2`` averaged over all images -> scalar.

    Differentiable; used with L1 in the expression-prior loss (L1 + 0.2 D-SSIM).
    """
    return jnp.mean((1.0 - ssim(pred, target, max_val)) / 2.0)
