"""Tile binning with a static intersection capacity (plain XLA ops; `jit`-friendly).

One global list of (camera, tile, Gaussian) intersections of static length `capacity`; never a
per-tile cap. Keys are sorted with `lax.sort(num_keys=2)` over (camera * n_tiles + tile id, depth),
stable so that depth ties keep Gaussian order (the same order as the dense reference). Per-tile
[start, end) ranges come from `jnp.searchsorted` over the sorted tile keys. When the true number of
intersections exceeds `capacity`, the intersections of the last Gaussians (in camera, Gaussian
order) are dropped and `overflow` is set: callers must check it (the public `rasterization()` does).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Binning(NamedTuple):
    flat_ids: jnp.ndarray  # [capacity] int32 camera * N + gaussian of each sorted intersection; C*N if unused
    tile_starts: jnp.ndarray  # [C * n_tiles] int32 first slot of each (camera, tile)
    tile_ends: jnp.ndarray  # [C * n_tiles] int32 one past the last slot
    n_intersections: jnp.ndarray  # [] int32 true count (may exceed capacity)
    overflow: jnp.ndarray  # [] bool n_intersections > capacity


def tile_rects(means2d, radii, tile_size: int, tile_width: int, tile_height: int):
    """Tile bounding boxes of each Gaussian: (x0, y0, x1, y1) int32 [..., N] each, half open.

    Same rule as gsplat: floor/ceil of (mean -+ radius) / tile_size, clamped to the tile grid; culled
    Gaussians (radius 0) get empty boxes.
    """
    means2d = jax.lax.stop_gradient(means2d)
    r = radii.astype(jnp.float32)
    x0 = jnp.clip(jnp.floor((means2d[..., 0] - r) / tile_size), 0, tile_width).astype(jnp.int32)
    x1 = jnp.clip(jnp.ceil((means2d[..., 0] + r) / tile_size), 0, tile_width).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor((means2d[..., 1] - r) / tile_size), 0, tile_height).astype(jnp.int32)
    y1 = jnp.clip(jnp.ceil((means2d[..., 1] + r) / tile_size), 0, tile_height).astype(jnp.int32)
    visible = radii > 0
    x1 = jnp.where(visible, jnp.maximum(x1, x0), x0)
    y1 = jnp.where(visible, jnp.maximum(y1, y0), y0)
    return x0, y0, x1, y1


def count_intersections(means2d, radii, tile_size: int, tile_width: int, tile_height: int):
    """Number of tiles touched per Gaussian [C, N] int32 (means2d [C, N, 2], radii [C, N])."""
    x0, y0, x1, y1 = tile_rects(means2d, radii, tile_size, tile_width, tile_height)
    return (x1 - x0) * (y1 - y0)


def bin_gaussians(means2d, depths, radii, tile_size: int, tile_width: int, tile_height: int, capacity: int):
    """Sorted intersection list and per-tile ranges; see `Binning`.

    means2d [C, N, 2], depths [C, N], radii [C, N] int32; static tile grid and `capacity`.
    """
    num_cameras, n = radii.shape
    n_tiles = tile_width * tile_height
    x0, y0, x1, y1 = tile_rects(means2d, radii, tile_size, tile_width, tile_height)
    counts = ((x1 - x0) * (y1 - y0)).reshape(-1)  # [C*N]
    ends = jnp.cumsum(counts)
    offsets = ends - counts
    n_isect = ends[-1]
    slots = jnp.arange(capacity, dtype=jnp.int32)
    # Owner of each slot: the Gaussian whose [offset, end) range contains it.
    owner = jnp.searchsorted(ends, slots, side="right").astype(jnp.int32)
    used = slots < n_isect
    owner_c = jnp.minimum(owner, num_cameras * n - 1)
    local = slots - offsets[owner_c]
    box_w = jnp.maximum((x1 - x0).reshape(-1)[owner_c], 1)
    tile_x = x0.reshape(-1)[owner_c] + local % box_w
    tile_y = y0.reshape(-1)[owner_c] + local // box_w
    camera = owner_c // n
    tile_key = jnp.where(used, camera * n_tiles + tile_y * tile_width + tile_x, num_cameras * n_tiles)
    depth_key = jnp.where(used, jax.lax.stop_gradient(depths).reshape(-1)[owner_c], jnp.inf)
    flat_ids = jnp.where(used, owner_c, num_cameras * n)
    tile_key, _, flat_ids = jax.lax.sort((tile_key, depth_key, flat_ids), num_keys=2, is_stable=True)
    all_tiles = jnp.arange(num_cameras * n_tiles, dtype=jnp.int32)
    tile_starts = jnp.searchsorted(tile_key, all_tiles, side="left").astype(jnp.int32)
    tile_ends = jnp.searchsorted(tile_key, all_tiles, side="right").astype(jnp.int32)
    return Binning(flat_ids.astype(jnp.int32), tile_starts, tile_ends, n_isect.astype(jnp.int32), n_isect > capacity)
