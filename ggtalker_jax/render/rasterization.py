"""`rasterization()`: the public 3D Gaussian Splatting renderer (gsplat-compatible signature).

Pipeline: EWA projection (`projection.py`, plain jnp, autodiff) -> tile binning with a static
intersection capacity (`ggtalker_jax.kernels.binning`) -> 2D rasterization. For backend="pallas"
the 2D stage is one `jax.custom_vjp` whose forward and backward are the Pallas kernels in
`ggtalker_jax.kernels`; for backend="cpu" it is the XLA:CPU tile compositor
(`kernels/cpu_tiles.py`, binned by `kernels/packed_binning.py`); for backend="xla" it is the dense
pure-jnp reference (`reference.py`). backend="auto" picks "pallas" on GPU and "cpu" elsewhere.

Capacity and overflow (static shapes):
* Called outside `jit` (concrete inputs), `rasterization()` first counts the intersections and
  uses a capacity large enough for all of them (the given `capacity` if it suffices, otherwise the
  count rounded up to a power of two): it never drops work.
* Called inside `jit`, `capacity` must be static; when None it defaults to
  `default_capacity(C, N)` = next power of two of 8 * C * N. If the true count exceeds it,
  `meta["overflow"]` is True, the intersections of the last Gaussians are dropped, and a Python
  `RuntimeWarning` is emitted from a `jax.debug.callback` (use `check_overflow(meta)` outside jit to
  turn it into an error).
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax.kernels.binning import bin_gaussians, count_intersections
from ggtalker_jax.kernels.common import GEOM_WIDTH, TileGrid, default_interpret
from ggtalker_jax.kernels.cpu_tiles import rasterize_to_pixels_cpu
from ggtalker_jax.kernels.rasterize_bwd import rasterize_tiles_bwd
from ggtalker_jax.kernels.rasterize_fwd import rasterize_tiles_fwd
from ggtalker_jax.render.projection import project_gaussians
from ggtalker_jax.render.reference import rasterize_to_pixels_reference

BACKENDS = ("pallas", "xla", "cpu", "auto")


def resolve_backend(backend: str) -> str:
    """"auto" -> the fastest backend for the default JAX platform ("pallas" on GPU, else "cpu")."""
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "cpu"
    return backend


RENDER_MODES = ("RGB", "RGB+ED")


def next_power_of_two(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def default_capacity(num_cameras: int, num_gaussians: int) -> int:
    """Static intersection capacity used inside jit when none is given: 8 tiles per Gaussian."""
    return next_power_of_two(max(8 * num_cameras * num_gaussians, 1024))


def check_overflow(meta) -> None:
    """Raise RuntimeError when a render dropped intersections (`meta` from `rasterization`)."""
    if bool(np.any(np.asarray(meta["overflow"]))):
        raise RuntimeError(
            f"rasterization: {int(np.max(meta['n_intersections']))} tile intersections exceed capacity "
            f"{meta['capacity']}; pass a larger static `capacity` (or call outside jit to size it "
            "automatically)."
        )


def _warn_overflow(overflow, n_isect, capacity):
    if bool(overflow):
        warnings.warn(
            f"rasterization: {int(n_isect)} tile intersections exceed capacity {int(capacity)}; "
            "intersections were dropped. Pass a larger static `capacity`.",
            RuntimeWarning,
            stacklevel=2,
        )


# --------------------------------------------------------------------------------------------------
# 2D stage on the Pallas kernels, as one custom_vjp.


def _pad_channels(colors):
    depth_channels = colors.shape[-1]
    padded = next_power_of_two(max(depth_channels, 1))
    return jnp.pad(colors, ((0, 0), (0, padded - depth_channels)))


def _gather_isects(flat_ids, means2d, conics, opacities, colors):
    """Per-intersection rows in sorted order: geometry [capacity, 8], colours [capacity, Dp]."""
    m = means2d.shape[0]
    geom = jnp.concatenate(
        [means2d, conics, opacities[:, None], jnp.zeros((m, GEOM_WIDTH - 6), means2d.dtype)], axis=1
    )
    ids = jnp.minimum(flat_ids, m - 1)  # unused slots (id == m) are never read by any tile
    return geom[ids], _pad_channels(colors)[ids]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def rasterize_tiles(grid: TileGrid, means2d, conics, opacities, colors, flat_ids, tile_starts, tile_ends):
    """Differentiable tiled 2D rasterization (no background).

    means2d [M, 2], conics [M, 3], opacities [M], colors [M, D] for M = C * N flattened
    (camera, Gaussian) pairs; flat_ids [capacity], tile_starts / tile_ends [C * n_tiles] from
    `bin_gaussians`. Returns colours [C * n_tiles, P, D] and final transmittance [C * n_tiles, P].
    """
    out, _ = _rasterize_tiles_fwd(grid, means2d, conics, opacities, colors, flat_ids, tile_starts, tile_ends)
    return out


def _rasterize_tiles_fwd(grid, means2d, conics, opacities, colors, flat_ids, tile_starts, tile_ends):
    geom, isect_colors = _gather_isects(flat_ids, means2d, conics, opacities, colors)
    tile_colors, t_final, last = rasterize_tiles_fwd(grid, tile_starts, tile_ends, geom, isect_colors)
    depth_channels = colors.shape[-1]
    residuals = (geom, isect_colors, t_final, last, flat_ids, tile_starts, tile_ends, means2d.shape[0])
    return (tile_colors[..., :depth_channels], t_final), residuals


def _rasterize_tiles_bwd(grid, residuals, cotangents):
    geom, isect_colors, t_final, last, flat_ids, tile_starts, tile_ends, m = residuals
    g_colors, g_t_final = cotangents
    depth_channels = g_colors.shape[-1]
    g_colors = jnp.pad(g_colors, ((0, 0), (0, 0), (0, isect_colors.shape[-1] - depth_channels)))
    d_geom, d_colors = rasterize_tiles_bwd(
        grid, tile_starts, tile_ends, geom, isect_colors, t_final, last, g_colors, g_t_final
    )
    used = flat_ids < m
    d_geom = jnp.where(used[:, None], d_geom, 0.0)
    d_colors = jnp.where(used[:, None], d_colors[:, :depth_channels], 0.0)
    # Deterministic reduction of the per-intersection gradients over Gaussian ids.
    d_geom = jax.ops.segment_sum(d_geom, flat_ids, num_segments=m)
    d_colors = jax.ops.segment_sum(d_colors, flat_ids, num_segments=m)
    return d_geom[:, 0:2], d_geom[:, 2:5], d_geom[:, 5], d_colors, None, None, None


rasterize_tiles.defvjp(_rasterize_tiles_fwd, _rasterize_tiles_bwd)


def tiles_to_image(tiles, num_cameras, tile_size, tile_width, tile_height, width, height):
    """[C * n_tiles, P, ...] in row-major tile order -> [C, H, W, ...]."""
    rest = tiles.shape[2:]
    img = tiles.reshape(num_cameras, tile_height, tile_width, tile_size, tile_size, *rest)
    img = jnp.moveaxis(img, 3, 2)  # [C, ty, ts_y, tx, ts_x, ...]
    img = img.reshape(num_cameras, tile_height * tile_size, tile_width * tile_size, *rest)
    return img[:, :height, :width]


# --------------------------------------------------------------------------------------------------
# Public API.


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width, height, tile_size,
              backend, render_mode):
    def need(cond, msg):
        if not cond:
            raise ValueError(f"rasterization: {msg}")

    need(means.ndim == 2 and means.shape[1] == 3, f"means must be [N, 3], got {means.shape}")
    n = means.shape[0]
    need(quats.shape == (n, 4), f"quats must be [N, 4] = [{n}, 4] (wxyz), got {quats.shape}")
    need(scales.shape == (n, 3), f"scales must be [N, 3] = [{n}, 3] (positive, not log), got {scales.shape}")
    need(opacities.shape == (n,), f"opacities must be [N] = [{n}], got {opacities.shape}")
    need(viewmats.ndim == 3 and viewmats.shape[1:] == (4, 4), f"viewmats must be [C, 4, 4], got {viewmats.shape}")
    c = viewmats.shape[0]
    need(Ks.shape == (c, 3, 3), f"Ks must be [C, 3, 3] = [{c}, 3, 3], got {Ks.shape}")
    need(
        (colors.ndim == 2 and colors.shape[0] == n) or (colors.ndim == 3 and colors.shape[:2] == (c, n)),
        f"colors must be [N, D] or [C, N, D] with N={n}, C={c}, got {colors.shape}",
    )
    d = colors.shape[-1]
    if backgrounds is not None:
        need(backgrounds.shape == (c, d), f"backgrounds must be [C, D] = [{c}, {d}] or None, got {backgrounds.shape}")
    need(int(width) > 0 and int(height) > 0, f"width/height must be positive, got {width}x{height}")
    need(int(tile_size) > 0 and (tile_size & (tile_size - 1)) == 0, f"tile_size must be a power of two, got {tile_size}")
    need(backend in BACKENDS, f"backend must be one of {BACKENDS}, got {backend!r}")
    need(render_mode in RENDER_MODES, f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    named = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
                 Ks=Ks, backgrounds=backgrounds)
    for name, value in named.items():
        if value is not None and not isinstance(value, jax.core.Tracer):
            need(bool(np.all(np.isfinite(np.asarray(value)))), f"{name} contains NaN or Inf; fix the input values")


@functools.partial(jax.jit, static_argnames=("width", "height", "tile_size", "near_plane", "far_plane", "eps2d"))
def _count_intersections_jit(means, quats, scales, viewmats, Ks, width, height, tile_size, near_plane, far_plane,
                             eps2d):
    proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    tw, th = -(-width // tile_size), -(-height // tile_size)
    return jnp.sum(count_intersections(proj.means2d, proj.radii, tile_size, tw, th))


def rasterization(
    means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int, near_plane: float = 0.01,
    far_plane: float = 1e10, eps2d: float = 0.3, backgrounds=None, tile_size: int = 16, backend: str = "pallas",
    render_mode: str = "RGB", capacity: int | None = None,
):
    """Render N 3D Gaussians into C cameras (gsplat.rasterization conventions).

    Args:
      means [N, 3]; quats [N, 4] wxyz (normalised here); scales [N, 3] positive; opacities [N] in
      [0, 1]; colors [N, D] or [C, N, D] (any D); viewmats [C, 4, 4] world-to-camera (OpenCV);
      Ks [C, 3, 3]; backgrounds [C, D] or None (zeros).
      width, height, tile_size, backend, render_mode, capacity: static under jit.
      render_mode: "RGB" or "RGB+ED" (expected depth appended as the last channel).
      capacity: static length of the intersection list; see the module docstring.
    Returns:
      render_colors [C, H, W, D (+1)], render_alphas [C, H, W, 1], meta dict (means2d [C, N, 2],
      depths [C, N], radii [C, N] int32, conics [C, N, 3], n_intersections [], capacity int,
      overflow [] bool, tile_width, tile_height, tile_size, width, height).
    """
    means, quats, scales, opacities, colors, viewmats, Ks = (
        jnp.asarray(x) for x in (means, quats, scales, opacities, colors, viewmats, Ks)
    )
    backgrounds = None if backgrounds is None else jnp.asarray(backgrounds)
    _validate(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width, height, tile_size,
              backend, render_mode)
    backend = resolve_backend(backend)
    traced = any(isinstance(x, jax.core.Tracer) for x in (means, quats, scales, opacities, colors, viewmats, Ks))
    if backend != "xla" and not traced:
        # Outside jit: count first so that no intersection is ever dropped.
        needed = int(_count_intersections_jit(means, quats, scales, viewmats, Ks, int(width), int(height),
                                              int(tile_size), float(near_plane), float(far_plane), float(eps2d)))
        if capacity is None or capacity < needed:
            capacity = next_power_of_two(max(needed, 1024))
    image, alphas, meta = _rasterization_impl(
        means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width=int(width), height=int(height),
        near_plane=float(near_plane), far_plane=float(far_plane), eps2d=float(eps2d), tile_size=int(tile_size),
        backend=backend, render_mode=render_mode, capacity=None if capacity is None else int(capacity),
        warn=traced,
    )
    tile_width, tile_height = -(-int(width) // int(tile_size)), -(-int(height) // int(tile_size))
    if backend == "xla":
        capacity_used = 0
    else:
        capacity_used = next_power_of_two(capacity) if capacity is not None else default_capacity(
            viewmats.shape[0], means.shape[0])
    meta.update(capacity=capacity_used, tile_width=tile_width, tile_height=tile_height, tile_size=int(tile_size),
                width=int(width), height=int(height))
    return image, alphas, meta


@functools.partial(
    jax.jit,
    static_argnames=("width", "height", "near_plane", "far_plane", "eps2d", "tile_size", "backend", "render_mode",
                     "capacity", "warn"),
)
def _rasterization_impl(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, *, width, height,
                        near_plane, far_plane, eps2d, tile_size, backend, render_mode, capacity, warn):
    num_cameras, n = viewmats.shape[0], means.shape[0]
    proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, eps2d)
    colors = jnp.broadcast_to(colors, (num_cameras, n, colors.shape[-1]))
    if render_mode == "RGB+ED":
        colors = jnp.concatenate([colors, proj.depths[..., None]], axis=-1)
    depth_channels = colors.shape[-1]
    if backgrounds is None:
        backgrounds = jnp.zeros((num_cameras, depth_channels), colors.dtype)
    elif render_mode == "RGB+ED":
        backgrounds = jnp.concatenate([backgrounds, jnp.zeros((num_cameras, 1), backgrounds.dtype)], axis=-1)
    tile_width, tile_height = -(-width // tile_size), -(-height // tile_size)

    if backend == "xla":
        image, t_final = rasterize_to_pixels_reference(
            proj.means2d, proj.conics, opacities, colors, proj.depths, proj.radii, width, height, tile_size
        )
        n_isect = jnp.sum(count_intersections(proj.means2d, proj.radii, tile_size, tile_width, tile_height))
        overflow = jnp.zeros((), jnp.bool_)
    else:
        # Power-of-two capacity keeps every block shape Triton-friendly.
        capacity_used = next_power_of_two(capacity) if capacity is not None else default_capacity(num_cameras, n)
    if backend == "cpu":
        image, t_final, n_isect, overflow = rasterize_to_pixels_cpu(
            proj.means2d, proj.conics, opacities, colors, proj.depths, proj.radii, width, height, tile_size,
            capacity_used)
        if warn:
            jax.debug.callback(_warn_overflow, overflow, n_isect, capacity_used)
    elif backend == "pallas":
        binning = bin_gaussians(proj.means2d, proj.depths, proj.radii, tile_size, tile_width, tile_height,
                                capacity_used)
        grid = TileGrid(num_cameras, tile_size, tile_width, tile_height, interpret=default_interpret())
        flat_opacities = jnp.broadcast_to(opacities, (num_cameras, n)).reshape(-1)
        tiles, t_tiles = rasterize_tiles(
            grid, proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3), flat_opacities,
            colors.reshape(-1, depth_channels), binning.flat_ids, binning.tile_starts, binning.tile_ends,
        )
        image = tiles_to_image(tiles, num_cameras, tile_size, tile_width, tile_height, width, height)
        t_final = tiles_to_image(t_tiles, num_cameras, tile_size, tile_width, tile_height, width, height)
        n_isect, overflow = binning.n_intersections, binning.overflow
        if warn:
            jax.debug.callback(_warn_overflow, overflow, n_isect, capacity_used)

    image = image + t_final[..., None] * backgrounds[:, None, None, :]
    alphas = (1.0 - t_final)[..., None]
    if render_mode == "RGB+ED":
        image = jnp.concatenate([image[..., :-1], image[..., -1:] / jnp.maximum(alphas, 1e-10)], axis=-1)
    meta = dict(means2d=proj.means2d, depths=proj.depths, radii=proj.radii, conics=proj.conics,
                n_intersections=n_isect, overflow=overflow)
    return image, alphas, meta
