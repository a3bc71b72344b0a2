"""Tile binning with a static intersection capacity (plain XLA ops; `jit`-friendly).

One global list of (camera, tile, Gaussian) intersections of static length `capacity`; never a per-tile
cap. Two single-key sorts, both eligible for XLA's CUB radix-sort rewrite on GPU (one int32 key, one
int32 payload):

1. the C * N (camera, Gaussian) pairs by depth (an order-preserving int32 image of the float depth);
2. the intersections, emitted pair by pair in that depth order, by the int32 key camera * n_tiles + tile,
   with the flat pair id as payload, stable: within a tile the depth order of step 1 is kept (ties in
   depth keep (camera, Gaussian) index order, as the dense reference).

Per-tile [start, end) ranges come from one `searchsorted` over the sorted tile keys. When the true number
of intersections exceeds `capacity`, the intersections of the farthest Gaussians (in depth order, all
cameras together) are the ones that do not fit, and `overflow` is set: callers must check it (the public
`rasterization()` warns and `check_overflow` raises).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

CAPACITY_QUANTUM = 1024  # static capacities are multiples of this


class Binning(NamedTuple):
    flat_ids: jnp.ndarray  # [capacity] int32 camera * N + gaussian of each sorted intersection; C*N if unused
    tile_starts: jnp.ndarray  # [C * n_tiles] int32 first slot of each (camera, tile)
    tile_ends: jnp.ndarray  # [C * n_tiles] int32 one past the last slot
    n_intersections: jnp.ndarray  # [] int32 true count (may exceed capacity)
    overflow: jnp.ndarray  # [] bool n_intersections > capacity


def round_capacity(n: int) -> int:
    """Smallest multiple of CAPACITY_QUANTUM that is >= max(n, 1) (static sizes stay few and Triton-free)."""
    return max(1, -(-int(n) // CAPACITY_QUANTUM)) * CAPACITY_QUANTUM


def tile_rects(means2d, radii, tile_size: int, tile_width: int, tile_height: int):
    """Tile bounding boxes of each Gaussian: (x0, y0, x1, y1) int32 [..., N] each, half open.

    means2d [..., N, 2], radii [..., N, 2] int (per-axis pixel radii; 0 = culled). Same rule as gsplat's
    `IntersectTile.cu`: floor / ceil of mean / tile_size -+ radius / tile_size, clamped to the tile grid;
    culled Gaussians get empty boxes.
    """
    means2d = jax.lax.stop_gradient(means2d)
    r = radii.astype(jnp.float32) / tile_size
    tx = means2d[..., 0] / tile_size
    ty = means2d[..., 1] / tile_size
    x0 = jnp.clip(jnp.floor(tx - r[..., 0]), 0, tile_width).astype(jnp.int32)
    x1 = jnp.clip(jnp.ceil(tx + r[..., 0]), 0, tile_width).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(ty - r[..., 1]), 0, tile_height).astype(jnp.int32)
    y1 = jnp.clip(jnp.ceil(ty + r[..., 1]), 0, tile_height).astype(jnp.int32)
    visible = (radii[..., 0] > 0) & (radii[..., 1] > 0)
    x1 = jnp.where(visible, jnp.maximum(x1, x0), x0)
    y1 = jnp.where(visible, jnp.maximum(y1, y0), y0)
    return x0, y0, x1, y1


def count_intersections(means2d, radii, tile_size: int, tile_width: int, tile_height: int):
    """Number of tiles touched per Gaussian [..., N] int32 (means2d [..., N, 2], radii [..., N, 2])."""
    x0, y0, x1, y1 = tile_rects(means2d, radii, tile_size, tile_width, tile_height)
    return (x1 - x0) * (y1 - y0)


def depth_sort_key(depths):
    """Order-preserving int32 image of float32 depths (negative depths included), for an integer sort."""
    bits = jax.lax.bitcast_convert_type(depths.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def bin_gaussians(means2d, depths, radii, tile_size: int, tile_width: int, tile_height: int, capacity: int):
    """Sorted intersection list and per-tile ranges; see `Binning`.

    means2d [C, N, 2], depths [C, N], radii [C, N, 2] int32; static tile grid and `capacity`.
    """
    num_cameras, n = depths.shape
    m = num_cameras * n
    n_tiles = tile_width * tile_height
    x0, y0, x1, y1 = (v.reshape(-1) for v in tile_rects(means2d, radii, tile_size, tile_width, tile_height))
    counts = (x1 - x0) * (y1 - y0)  # [M]
    # 1. Pairs by depth; pairs without tiles go last (their order is irrelevant).
    depth_key = jnp.where(counts > 0, depth_sort_key(jax.lax.stop_gradient(depths).reshape(-1)),
                          jnp.iinfo(jnp.int32).max)
    _, order = jax.lax.sort((depth_key, jnp.arange(m, dtype=jnp.int32)), num_keys=1, is_stable=True)
    ends = jnp.cumsum(counts[order])  # [M] in depth order
    n_isect = ends[-1]
    # 2. Slot s belongs to the pair whose [end - count, end) range contains it.
    slots = jnp.arange(capacity, dtype=jnp.int32)
    rank = jnp.minimum(jnp.searchsorted(ends, slots, side="right").astype(jnp.int32), m - 1)
    owner = order[rank]
    local = slots - (ends[rank] - counts[owner])
    box_w = jnp.maximum(x1[owner] - x0[owner], 1)
    tile = (y0[owner] + local // box_w) * tile_width + x0[owner] + local % box_w
    used = slots < n_isect
    tile_key = jnp.where(used, (owner // n) * n_tiles + tile, num_cameras * n_tiles)
    flat_ids = jnp.where(used, owner, m)
    tile_key, flat_ids = jax.lax.sort((tile_key, flat_ids), num_keys=1, is_stable=True)
    bounds = jnp.searchsorted(tile_key, jnp.arange(num_cameras * n_tiles + 1, dtype=jnp.int32), side="left")
    bounds = bounds.astype(jnp.int32)
    return Binning(flat_ids.astype(jnp.int32), bounds[:-1], bounds[1:], n_isect.astype(jnp.int32), n_isect > capacity)
