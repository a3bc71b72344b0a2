"""Tile binning with one single-operand sort of packed int32 keys (same `Binning` as `binning.py`).

`binning.bin_gaussians` sorts the capacity-long intersection list with a 3-operand, 2-key
`lax.sort` (tile key, depth, id) and finds slot owners with `searchsorted`; on XLA:CPU that is most
of a render's time. Here the same list comes from cheaper pieces:

1. rank the Gaussians of each camera by depth once (a stable argsort of N, ties keep index order);
2. lay the intersections out in (camera, depth rank) order; slot owners come from a scatter of
   each Gaussian's first slot and a cumulative sum;
3. pack key = (camera * n_tiles + tile) * N + depth rank into one int32 (unique per intersection)
   and sort the keys alone; tile and rank decode from the key, the Gaussian id is the rank's entry
   of step 1's order.

The sorted list orders by (camera, tile, depth, Gaussian index), exactly as `bin_gaussians` does,
and uses its `tile_rects`, so its tile boxes follow that module. Needs (C * n_tiles + 1) * N < 2^31
(`packed_keys_fit`); callers fall back to `bin_gaussians` otherwise. On overflow the intersections
of the farthest Gaussians of the last camera are dropped (and `overflow` is set).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ggtalker_jax.kernels.binning import Binning, tile_rects

_INT32_MAX = 2**31 - 1


def prefix_sum(x):
    """Inclusive cumulative sum along axis 0. A parallel-prefix scan: on XLA:CPU `jnp.cumsum` over a
    long axis lowers to windowed reductions that are 2-3x slower."""
    return jax.lax.associative_scan(jnp.add, x, axis=0)


def packed_keys_fit(num_cameras: int, num_gaussians: int, n_tiles: int) -> bool:
    """Whether every packed key, including the unused-slot sentinel, fits in an int32."""
    return (num_cameras * n_tiles + 1) * max(num_gaussians, 1) <= _INT32_MAX


def bin_gaussians_packed(means2d, depths, radii, tile_size: int, tile_width: int, tile_height: int,
                         capacity: int) -> Binning:
    """Sorted intersection list and per-tile ranges; same contract and result as `bin_gaussians`.

    means2d [C, N, 2], depths [C, N], radii as `tile_rects` takes them; static tile grid and `capacity`.
    """
    num_cameras, n = depths.shape
    n_tiles = tile_width * tile_height
    if not packed_keys_fit(num_cameras, n, n_tiles):
        raise ValueError(f"packed binning: ({num_cameras} * {n_tiles} + 1) * {n} keys do not fit in int32")
    x0, y0, x1, y1 = tile_rects(means2d, radii, tile_size, tile_width, tile_height)
    order = jnp.argsort(jax.lax.stop_gradient(depths), axis=1, stable=True).astype(jnp.int32)  # [C, N]
    camera_base = (jnp.arange(num_cameras, dtype=jnp.int32) * n)[:, None]
    by_depth = (camera_base + order).reshape(-1)  # flat (camera, Gaussian) id at each (camera, rank)
    box_w = (x1 - x0).reshape(-1)[by_depth]
    counts = box_w * (y1 - y0).reshape(-1)[by_depth]
    ends = jnp.cumsum(counts)
    offsets = ends - counts
    n_isect = ends[-1]
    # Owner of each slot: the k-th Gaussian with work (k = how many first slots are at or before it, - 1).
    has_work = counts > 0
    first_slot_marks = jnp.zeros((capacity + 1,), jnp.int32).at[jnp.minimum(offsets, capacity)].add(
        has_work.astype(jnp.int32))
    (working,) = jnp.nonzero(has_work, size=num_cameras * n, fill_value=num_cameras * n - 1)
    slots = jnp.arange(capacity, dtype=jnp.int32)
    kth = jnp.clip(prefix_sum(first_slot_marks[:capacity]) - 1, 0, num_cameras * n - 1)
    owner = working.astype(jnp.int32)[kth]  # flat (camera, rank)
    local = slots - offsets[owner]
    gid = by_depth[owner]
    w = jnp.maximum(box_w[owner], 1)
    camera = owner // n
    tile = camera * n_tiles + (y0.reshape(-1)[gid] + local // w) * tile_width + x0.reshape(-1)[gid] + local % w
    sentinel = num_cameras * n_tiles
    keys = jnp.where(slots < n_isect, tile * n + (owner - camera * n), sentinel * n)
    keys = jax.lax.sort(keys, is_stable=False)  # keys are unique (but for the equal sentinels)
    sorted_tile = keys // n
    sorted_rank = keys - sorted_tile * n
    sorted_camera = jnp.minimum(sorted_tile // n_tiles, num_cameras - 1)
    flat_ids = jnp.where(sorted_tile < sentinel, by_depth[sorted_camera * n + sorted_rank], num_cameras * n)
    per_tile = jnp.zeros((sentinel + 1,), jnp.int32).at[sorted_tile].add(1)[:sentinel]
    tile_ends = jnp.cumsum(per_tile)
    return Binning(flat_ids.astype(jnp.int32), (tile_ends - per_tile).astype(jnp.int32), tile_ends.astype(jnp.int32),
                   n_isect.astype(jnp.int32), n_isect > capacity)
