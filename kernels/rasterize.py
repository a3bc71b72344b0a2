"""The tiled 2D rasterization stage on the Pallas kernels: binning + one `jax.custom_vjp`.

`rasterize_to_pixels_pallas` takes screen-space Gaussians (the output of a projection) and returns the
image without background and the final transmittance. Its gradient is the backward kernel followed by a
reduction of the per-intersection gradient rows over Gaussian ids (`jax.ops.segment_sum`).

Determinism: on CPU the reduction is sequential and deterministic. On GPU XLA lowers `segment_sum` to a
scatter-add with float atomics, whose summation order (and so the last bits of the gradients) can change
from run to run; set `XLA_FLAGS=--xla_gpu_deterministic_ops=true` for run-to-run identical gradients
(XLA then expands the scatter deterministically, at some cost). The kernels themselves are
deterministic: no atomics, every slot written by exactly one program.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ggtalker_jax.kernels.binning import bin_gaussians
from ggtalker_jax.kernels.common import GEOM_COLUMNS, GEOM_WIDTH, TileGrid
from ggtalker_jax.kernels.rasterize_bwd import rasterize_tiles_bwd
from ggtalker_jax.kernels.rasterize_fwd import rasterize_tiles_fwd


class TiledRender(NamedTuple):
    colors: jnp.ndarray  # [C, H, W, D] without background
    transmittance: jnp.ndarray  # [C, H, W] final T
    n_intersections: jnp.ndarray  # [] int32 true count
    overflow: jnp.ndarray  # [] bool: intersections did not fit in the capacity


def pack_geometry(means2d, conics, opacities):
    """Per-Gaussian rows [M, 8]: mean x, mean y, conic a, b, c, opacity, 0, 0."""
    m = means2d.shape[0]
    pad = jnp.zeros((m, GEOM_WIDTH - GEOM_COLUMNS), means2d.dtype)
    return jnp.concatenate([means2d, conics, opacities[:, None], pad], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def rasterize_tiles(grid: TileGrid, geom, colors, flat_ids, tile_starts, tile_ends):
    """Differentiable tiled 2D rasterization (no background).

    geom [M, 8] (`pack_geometry`), colors [M, D] for M = C * N flattened (camera, Gaussian) pairs;
    flat_ids [capacity], tile_starts / tile_ends [C * n_tiles] from `bin_gaussians`. Returns colours
    [C * n_tiles, D, P] and final transmittance [C * n_tiles, P].
    """
    out, _ = _rasterize_tiles_fwd(grid, geom, colors, flat_ids, tile_starts, tile_ends)
    return out


def _rasterize_tiles_fwd(grid, geom, colors, flat_ids, tile_starts, tile_ends):
    tile_colors, t_final, last = rasterize_tiles_fwd(grid, tile_starts, tile_ends, flat_ids, geom, colors)
    return (tile_colors, t_final), (geom, colors, t_final, last, flat_ids, tile_starts, tile_ends)


def _rasterize_tiles_bwd(grid, residuals, cotangents):
    geom, colors, t_final, last, flat_ids, tile_starts, tile_ends = residuals
    g_colors, g_t_final = cotangents
    d_rows = rasterize_tiles_bwd(grid, tile_starts, tile_ends, flat_ids, geom, colors, t_final, last, g_colors,
                                 g_t_final)
    m = geom.shape[0]
    d_rows = jnp.where((flat_ids < m)[None, :], d_rows, 0.0)  # unused slots hold no gradient
    d_gauss = jax.ops.segment_sum(d_rows.T, flat_ids, num_segments=m)  # [M, 6 + D]
    d_geom = jnp.pad(d_gauss[:, :GEOM_COLUMNS], ((0, 0), (0, GEOM_WIDTH - GEOM_COLUMNS)))
    return d_geom, d_gauss[:, GEOM_COLUMNS:], None, None, None


rasterize_tiles.defvjp(_rasterize_tiles_fwd, _rasterize_tiles_bwd)


def tiles_to_image(tiles, num_cameras, tile_size, tile_width, tile_height, width, height):
    """[C * n_tiles, P] or [C * n_tiles, D, P] in row-major tile order -> [C, H, W] or [C, H, W, D]."""
    if tiles.ndim == 3:
        tiles = jnp.swapaxes(tiles, 1, 2)
    rest = tiles.shape[2:]
    img = tiles.reshape(num_cameras, tile_height, tile_width, tile_size, tile_size, *rest)
    img = jnp.moveaxis(img, 3, 2)  # [C, ty, ts_y, tx, ts_x, ...]
    img = img.reshape(num_cameras, tile_height * tile_size, tile_width * tile_size, *rest)
    return img[:, :height, :width]


def rasterize_to_pixels_pallas(means2d, conics, opacities, colors, depths, radii, width: int, height: int,
                               grid: TileGrid, capacity: int) -> TiledRender:
    """Tiled rasterization of screen-space Gaussians on the Pallas kernels.

    means2d [C, N, 2], conics [C, N, 3], opacities [C, N], colors [C, N, D], depths [C, N], radii
    [C, N, 2] int32 (0 = culled); `grid` (static) matches width/height; `capacity` static.
    """
    num_cameras, n = depths.shape
    binning = bin_gaussians(means2d, depths, radii, grid.tile_size, grid.tile_width, grid.tile_height, capacity)
    geom = pack_geometry(means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1))
    tiles, t_tiles = rasterize_tiles(grid, geom, colors.reshape(num_cameras * n, -1), binning.flat_ids,
                                     binning.tile_starts, binning.tile_ends)
    shape = (num_cameras, grid.tile_size, grid.tile_width, grid.tile_height, width, height)
    return TiledRender(tiles_to_image(tiles, *shape), tiles_to_image(t_tiles, *shape), binning.n_intersections,
                       binning.overflow)
