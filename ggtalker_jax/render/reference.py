"""The readable pure-jnp rasterizer: the spec the Pallas kernels are tested against.

Dense over pixels x Gaussians (O(H W N) memory), so it is meant for small images, tests and the CPU path;
differentiated by JAX autodiff. Per pixel, Gaussians are taken front to back in depth order and only those
whose tile rectangle covers the pixel's tile count (exactly the lists the tiled kernels walk):

    sigma = 0.5 d^T conic d          (d = pixel centre - mean2d; skip sigma < 0)
    alpha = min(0.99, opacity exp(-sigma))   (skip alpha < 1/255)
    stop before the first Gaussian after which T would fall below 1e-4 (that one is not blended)
    C = sum_i c_i alpha_i T_i + T_final bg,    T_i = prod_{j<i} (1 - alpha_j)

The stop rule needs no loop: T only decreases, so "T after i >= 1e-4" holds exactly for the Gaussians
before the first one that fails it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ggtalker_jax.render.projection import tile_bounds

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4


def pixel_centres(width: int, height: int):
    """[H * W, 2] (x, y) pixel centres, row-major."""
    ys, xs = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
    return jnp.stack([xs.ravel(), ys.ravel()], -1)


def gaussian_alphas(pixels, means2d, conics, opacities):
    """alpha [P, N] of every Gaussian at every pixel (before the tile mask and skip rules)."""
    d = pixels[:, None, :] - means2d[None, :, :]                                 # [P, N, 2]
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
    alpha = jnp.minimum(ALPHA_MAX, opacities[None, :] * jnp.exp(-jnp.maximum(sigma, 0.0)))
    return jnp.where(sigma >= 0, alpha, 0.0)


def rasterize_reference(means2d, conics, opacities, colors, depths, radii, background, width: int,
                        height: int, tile_size: int = 16):
    """Composites projected Gaussians of one camera.

    means2d [N, 2], conics [N, 3], opacities [N], colors [N, D], depths [N], radii [N] (0 = culled),
    background [D]. Returns (image [H, W, D], alpha [H, W, 1]).
    """
    order = jnp.argsort(jnp.where(radii > 0, depths, jnp.inf))
    means2d, conics, opacities, colors, radii = (x[order] for x in (means2d, conics, opacities, colors, radii))
    pixels = pixel_centres(width, height)
    alpha = gaussian_alphas(pixels, means2d, conics, opacities)                   # [P, N]
    lo, hi = tile_bounds(means2d, radii, width, height, tile_size)
    tile = jnp.floor(pixels / tile_size).astype(jnp.int32)                        # [P, 2]
    covers = jnp.all((tile[:, None, :] >= lo[None]) & (tile[:, None, :] < hi[None]), axis=-1)
    alpha = jnp.where(covers & (radii > 0)[None] & (alpha >= ALPHA_MIN), alpha, 0.0)
    transmit = jnp.cumprod(1.0 - alpha, axis=1)                                   # T after each Gaussian
    blended = transmit >= T_MIN
    T_before = jnp.concatenate([jnp.ones_like(transmit[:, :1]), transmit[:, :-1]], axis=1)
    weights = jnp.where(blended, alpha * T_before, 0.0)                           # [P, N]
    T_final = 1.0 - jnp.sum(weights, axis=1, keepdims=True)
    image = weights @ colors + T_final * background[None, :]
    return image.reshape(height, width, -1), (1.0 - T_final).reshape(height, width, 1)


def rasterize_reference_batched(means2d, conics, opacities, colors, depths, radii, backgrounds, width, height,
                                tile_size=16):
    """Cameras batched: every argument has a leading [C] axis."""
    fn = lambda *a: rasterize_reference(*a, width=width, height=height, tile_size=tile_size)
    return jax.vmap(fn)(means2d, conics, opacities, colors, depths, radii, backgrounds)
