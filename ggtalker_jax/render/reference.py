"""Pure-jnp reference of the 2D rasterization stage (dense, differentiated by JAX autodiff).

For every pixel, all Gaussians are composited front to back in depth order with the rules of
`ggtalker_jax.kernels.conventions`, as the tiled Pallas kernels do:

* with `tile_size` given, a Gaussian only touches pixels in the tiles of its box (the same `tile_rects`
  as the binning); with tile_size=None it touches every pixel (an untiled render: under the gsplat rules
  the two agree, the box covers every pixel where alpha >= 1/255);
* sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = mean2d - pixel centre; skip sigma < 0;
* alpha = min(alpha_max, opacity exp(-sigma)); skip alpha < 1/255;
* stop at the first Gaussian with T (1 - alpha) <= 1e-4 (gsplat; < for INRIA), not blended.

Vectorised form of the sequential loop: with a_k the alpha of the non-skipped Gaussians (0 for skipped),
the transmittance after k, T_k = prod_{m<=k} (1 - a_m), is non-increasing, so "not yet stopped" is a
prefix and Gaussian k is blended iff it is not skipped and T_k is above the threshold. The image is then
sum_k a_k T_{k-1} c_k over blended Gaussians, and the final transmittance prod (1 - a_k).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ggtalker_jax.kernels.binning import tile_rects
from ggtalker_jax.kernels.conventions import ALPHA_THRESHOLD, GSPLAT, Conventions, pixel_done


def clamp_alpha(raw_alpha, conventions: Conventions):
    """min(alpha_max, raw) with zero gradient where clamped (as gsplat's backward)."""
    return jnp.where(raw_alpha > conventions.alpha_max, conventions.alpha_max, raw_alpha)


def _composite_pixels(px, py, tile_ids, means2d, conics, opacities, colors, rects, visible, conventions):
    """Composite pixels [P] against Gaussians [N] sorted by depth -> colours [P, D], T_final [P]."""
    if rects is None:
        touches = visible[None, :]
    else:
        x0, y0, x1, y1 = rects
        tx, ty = tile_ids
        touches = (tx[:, None] >= x0) & (tx[:, None] < x1) & (ty[:, None] >= y0) & (ty[:, None] < y1)
    dx = means2d[None, :, 0] - px[:, None]
    dy = means2d[None, :, 1] - py[:, None]
    a, b, c = conics[None, :, 0], conics[None, :, 1], conics[None, :, 2]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = clamp_alpha(opacities[None, :] * jnp.exp(-sigma), conventions)
    ok = touches & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha_ok = jnp.where(ok, alpha, 0.0)
    t_after = jnp.cumprod(1.0 - alpha_ok, axis=1)
    blended = ok & ~pixel_done(t_after, conventions)
    alpha_eff = jnp.where(blended, alpha, 0.0)
    t_incl = jnp.cumprod(1.0 - alpha_eff, axis=1)
    t_before = jnp.concatenate([jnp.ones_like(t_incl[:, :1]), t_incl[:, :-1]], axis=1)
    weights = alpha_eff * t_before  # [P, N]
    return weights @ colors, t_incl[:, -1]


def rasterize_to_pixels_reference(
    means2d, conics, opacities, colors, depths, radii, width: int, height: int, tile_size: int | None = 16,
    conventions: Conventions = GSPLAT, pixel_chunk: int = 4096,
):
    """Dense reference of the rasterization stage, without background.

    means2d [C, N, 2], conics [C, N, 3], opacities [N] or [C, N], colors [C, N, D], depths [C, N],
    radii [C, N, 2] int ((0, 0) = culled). tile_size=None: untiled (every visible Gaussian meets every
    pixel). Returns (colors [C, H, W, D], final transmittance [C, H, W]). Pixels are processed in chunks
    of `pixel_chunk` to bound memory (P x N intermediates).
    """
    num_cameras, n = depths.shape
    opacities = jnp.broadcast_to(opacities, (num_cameras, n))
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    px = cols.reshape(-1).astype(means2d.dtype) + 0.5
    py = rows.reshape(-1).astype(means2d.dtype) + 0.5
    n_pix = width * height
    chunk = min(pixel_chunk, n_pix)
    n_chunks = -(-n_pix // chunk)
    pad = n_chunks * chunk - n_pix

    def pad_chunks(v):
        return jnp.pad(v, (0, pad)).reshape(n_chunks, chunk)

    tiled = tile_size is not None
    tile_of_pixel = (cols.reshape(-1) // tile_size, rows.reshape(-1) // tile_size) if tiled else (px, py)
    pix = tuple(pad_chunks(v) for v in (px, py, *tile_of_pixel))

    def one_camera(m2d, con, opa, col, dep, rad):
        visible = (rad[:, 0] > 0) & (rad[:, 1] > 0)
        # Culled Gaussians go last; stable sort keeps index order among equal depths.
        order = jnp.argsort(jnp.where(visible, jax.lax.stop_gradient(dep), jnp.inf), stable=True)
        m2d, con, opa, col, rad, visible = m2d[order], con[order], opa[order], col[order], rad[order], visible[order]
        if tiled:
            rects = tile_rects(m2d, rad, tile_size, -(-width // tile_size), -(-height // tile_size))
        else:
            rects = None

        def chunk_fn(p):
            return _composite_pixels(p[0], p[1], (p[2], p[3]), m2d, con, opa, col, rects, visible, conventions)

        out, t_final = jax.lax.map(chunk_fn, pix)
        out = out.reshape(n_chunks * chunk, -1)[:n_pix].reshape(height, width, -1)
        t_final = t_final.reshape(-1)[:n_pix].reshape(height, width)
        return out, t_final

    return jax.vmap(one_camera)(means2d, conics, opacities, colors, depths, radii)
