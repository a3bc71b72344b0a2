"""`rasterization()`: gsplat's entry point and argument conventions, in JAX.

    colors, alphas, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H)

The projection (EWA, `projection.py`) is plain jnp for every backend; the 2D compositing stage is either
the readable reference (`backend="xla"`, `reference.py`) or the tiled Pallas kernels
(`backend="pallas"`, `ggtalker_jax.kernels`), which are held to the reference by the tests.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ggtalker_jax.render.projection import project_gaussians
from ggtalker_jax.render.reference import rasterize_reference

BACKENDS = ("xla", "pallas")


def _check(name, x, shape_desc, ok):
    if not ok:
        raise ValueError(f"rasterization: {name} must be {shape_desc}, got shape {getattr(x, 'shape', None)}")


def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int,
                  near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3, backgrounds=None,
                  tile_size: int = 16, backend: str = "xla", render_mode: str = "RGB", capacity: int | None = None):
    """Renders N Gaussians into C cameras.

    means [N, 3]; quats [N, 4] (wxyz, need not be normalised); scales [N, 3] (positive, not log);
    opacities [N] in [0, 1]; colors [N, D] or [C, N, D] (any channel count D); viewmats [C, 4, 4]
    world-to-camera (OpenCV axes); Ks [C, 3, 3]; backgrounds [C, D] or None (zeros).
    render_mode "RGB" or "RGB+ED" (adds expected depth, normalised by alpha, as the last channel).
    Returns (render_colors [C, H, W, D(+1)], render_alphas [C, H, W, 1], meta) with meta holding
    means2d [C, N, 2], conics [C, N, 3], depths [C, N], radii [C, N] and backend-specific entries
    (the Pallas backend adds n_intersections, capacity, overflow).
    """
    if backend not in BACKENDS:
        raise ValueError(f"rasterization: backend must be one of {BACKENDS}, got {backend!r}")
    if render_mode not in ("RGB", "RGB+ED"):
        raise ValueError(f"rasterization: render_mode must be 'RGB' or 'RGB+ED', got {render_mode!r}")
    n = means.shape[0] if means.ndim == 2 else -1
    _check("means", means, "[N, 3]", means.ndim == 2 and means.shape[1] == 3)
    _check("quats", quats, f"[{n}, 4]", quats.shape == (n, 4))
    _check("scales", scales, f"[{n}, 3]", scales.shape == (n, 3))
    _check("opacities", opacities, f"[{n}]", opacities.shape == (n,))
    _check("viewmats", viewmats, "[C, 4, 4]", viewmats.ndim == 3 and viewmats.shape[1:] == (4, 4))
    c = viewmats.shape[0]
    _check("Ks", Ks, f"[{c}, 3, 3]", Ks.shape == (c, 3, 3))
    _check("colors", colors, f"[{n}, D] or [{c}, {n}, D]",
           (colors.ndim == 2 and colors.shape[0] == n) or (colors.ndim == 3 and colors.shape[:2] == (c, n)))
    if colors.ndim == 2:
        colors = jnp.broadcast_to(colors, (c, *colors.shape))
    d = colors.shape[-1]
    if backgrounds is None:
        backgrounds = jnp.zeros((c, d), colors.dtype)
    _check("backgrounds", backgrounds, f"[{c}, {d}]", backgrounds.shape == (c, d))

    proj = jax.vmap(lambda v, k: project_gaussians(means, quats, scales, v, k, width, height, near_plane,
                                                   far_plane, eps2d))(viewmats, Ks)
    if render_mode == "RGB+ED":
        colors = jnp.concatenate([colors, jnp.broadcast_to(proj["depths"][..., None], (c, n, 1))], -1)
        backgrounds = jnp.concatenate([backgrounds, jnp.zeros((c, 1), backgrounds.dtype)], -1)
    meta = {k: proj[k] for k in ("means2d", "conics", "depths", "radii")}
    meta.update(tile_width=(width + tile_size - 1) // tile_size, tile_height=(height + tile_size - 1) // tile_size,
                tile_size=tile_size, width=width, height=height)
    args = (proj["means2d"], proj["conics"], jnp.broadcast_to(opacities, (c, n)), colors, proj["depths"],
            proj["radii"], backgrounds)
    if backend == "xla":
        fn = lambda *a: rasterize_reference(*a, width=width, height=height, tile_size=tile_size)
        images, alphas = jax.vmap(fn)(*args)
    else:
        from ggtalker_jax.kernels import rasterize as kernels
        images, alphas, kmeta = kernels.rasterize_tiles(*args, width=width, height=height, tile_size=tile_size,
                                                        capacity=capacity)
        meta.update(kmeta)
    if render_mode == "RGB+ED":
        depth = images[..., -1:] / jnp.maximum(alphas, 1e-10)
        images = jnp.concatenate([images[..., :-1], depth], -1)
    return images, alphas, meta
