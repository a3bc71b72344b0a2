"""Pallas backward kernel: back-to-front walk of each tile from its last contributor, K Gaussians a step.

Per pixel it starts from the saved final transmittance, recovers T in front of Gaussian j as
T / (1 - alpha_j), and keeps B, the sum of c alpha T over the blended Gaussians behind j. With incoming
cotangents dL/dC [D, P] and dL/dT_final [P] (the caller folds the background term bg . dL/dC and minus the
alpha-image cotangent into the latter), as gsplat's `RasterizeToPixels3DGSBwd.cu`:

    dL/dalpha_j = sum_d dL/dC_d (c_jd T_j - B_jd / (1 - alpha_j)) - dL/dT_final T_final / (1 - alpha_j).

Each Gaussian's gradient (mean x, mean y, conic a, b, c, opacity, D colours: Q = 6 + D values) is a sum
over the tile's pixels. The Q per-pixel terms of the K Gaussians of one step are stacked (pairwise
`jnp.stack`, Triton `join`: the new axes stay inside each thread) into [P, 2, ..., 2] blocks, one per
power of two in Q, and each block is reduced over the pixels at once: a step pays a few block-wide
reductions (and their barriers) instead of Q per Gaussian, and stores its K x Q results with one vector
store per block. The loads of the next step's Gaussians are issued before the current step's arithmetic
(software pipelining by hand: Triton does not pipeline scalar loads).

Accumulation across tiles: every intersection slot belongs to exactly one tile, so each program writes the
gradient of its own slots (per-intersection rows, no write conflicts) and the caller reduces them over
Gaussian ids.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pallas_triton

from ggtalker_jax.kernels.common import GEOM_COLUMNS, TileGrid, gaussian_alpha, tile_pixel_centres


def _power_of_two_parts(n: int) -> tuple[int, ...]:
    """Binary decomposition of n, largest first: 11 -> (8, 2, 1)."""
    return tuple(1 << b for b in reversed(range(n.bit_length())) if n >> b & 1)


def _stack_tree(vectors):
    """Stack 2^m arrays of one shape S into S + (2,) * m; vector i lands at flat index i (`_tree_index`)."""
    while len(vectors) > 1:
        vectors = [jnp.stack([vectors[i], vectors[i + 1]], axis=-1) for i in range(0, len(vectors), 2)]
    return vectors[0]


def _tree_index(n: int):
    """[2] * log2(n) int32: which input of `_stack_tree` (n inputs) sits at each position of its trailing axes.

    Level l of the tree stacks pairs along a new last axis, so the axis created at level l (axis l of the
    trailing axes) has stride 2^l in the input order.
    """
    levels = n.bit_length() - 1
    index = jnp.zeros((2,) * levels, jnp.int32)
    for level in range(levels):
        shape = [1] * levels
        shape[level] = 2
        index = index + jax.lax.broadcasted_iota(jnp.int32, tuple(shape), level) * (1 << level)
    return index


def _backward_kernel(grid: TileGrid, starts_ref, ends_ref, ids_ref, geom_ref, colors_ref, t_final_ref, last_ref,
                     g_colors_ref, g_t_final_ref, d_rows_ref):
    program = pl.program_id(0)
    start = starts_ref[0]
    end = ends_ref[0]
    px, py = tile_pixel_centres(grid, program)
    depth_channels = colors_ref.shape[-1]
    n_rows = GEOM_COLUMNS + depth_channels
    k_batch = grid.tuning.backward_batch
    alpha_max = grid.conventions.alpha_max
    last_gaussian = geom_ref.shape[0] - 1
    t_final = t_final_ref[...]  # [P]
    last = last_ref[...]  # [P]
    g_colors = tuple(g_colors_ref[d, :] for d in range(depth_channels))  # D x [P]
    g_t_term = g_t_final_ref[...] * t_final  # [P]
    tile_last = jnp.max(last)  # slots after the tile's last contributor get zero gradient
    rows = jax.lax.broadcasted_iota(jnp.int32, (k_batch,), 0)

    def zero_batch(b, carry):
        slots = tile_last + 1 + b * k_batch + rows
        for q in range(n_rows):
            pallas_triton.store(d_rows_ref.at[q, slots], jnp.zeros((k_batch,), jnp.float32), mask=slots < end)
        return carry

    jax.lax.fori_loop(0, (end - tile_last - 1 + k_batch - 1) // k_batch, zero_batch, 0)

    def fetch_ids(hi):
        """Ids of the K slots hi, hi - 1, ... (clamped into the list: prefetches may run past the range)."""
        return tuple(ids_ref[jnp.maximum(hi - k, 0)] for k in range(k_batch))

    def fetch(ids):
        """Geometry rows and colours of the Gaussians `ids`."""
        ids = [jnp.minimum(g, last_gaussian) for g in ids]
        return (tuple(tuple(geom_ref[g, q] for q in range(GEOM_COLUMNS)) for g in ids),
                tuple(tuple(colors_ref[g, d] for d in range(depth_channels)) for g in ids))

    def one_gaussian(j, geom, colors, trans, behind):
        """Gradient terms [P] (Q of them) of slot j; updated T in front of j and B."""
        mx, my, a, b, c, _ = geom
        dx, dy, _, vis, raw_alpha, alpha, ok = gaussian_alpha(grid, *geom, px, py)
        valid = ok & (j <= last) & (j >= start)
        inv_keep = 1.0 / (1.0 - alpha)
        trans = jnp.where(valid, trans * inv_keep, trans)  # T in front of j
        weight = jnp.where(valid, alpha * trans, 0.0)
        d_alpha = -g_t_term * inv_keep
        for g_d, c_d, b_d in zip(g_colors, colors, behind):
            d_alpha = d_alpha + g_d * (c_d * trans - b_d * inv_keep)
        d_alpha = jnp.where(valid & (raw_alpha <= alpha_max), d_alpha, 0.0)  # zero gradient through the cap
        d_sigma = -raw_alpha * d_alpha
        terms = [d_sigma * (a * dx + b * dy), d_sigma * (b * dx + c * dy), 0.5 * d_sigma * dx * dx,
                 d_sigma * dx * dy, 0.5 * d_sigma * dy * dy, vis * d_alpha, *(weight * g_d for g_d in g_colors)]
        behind = tuple(b_d + weight * c_d for b_d, c_d in zip(behind, colors))
        return terms, trans, behind

    def batch_step(step, carry):
        trans, behind, (geoms, colors), next_ids = carry
        hi = tile_last - step * k_batch
        prefetched = (fetch(next_ids), fetch_ids(hi - 2 * k_batch))
        per_gaussian = []
        for k in range(k_batch):
            terms, trans, behind = one_gaussian(hi - k, geoms[k], colors[k], trans, behind)
            per_gaussian.append(terms)
        row = 0
        for size in _power_of_two_parts(n_rows):
            block = [per_gaussian[k][row + q] for k in range(k_batch) for q in range(size)]
            if len(block) == 1:
                pallas_triton.store(d_rows_ref.at[row, hi], jnp.sum(block[0]), mask=hi >= start)
            else:
                index = _tree_index(len(block))  # = k * size + q
                slots = hi - index // size
                pallas_triton.store(d_rows_ref.at[row + index % size, slots], jnp.sum(_stack_tree(block), axis=0),
                                    mask=slots >= start)
            row += size
        return trans, behind, *prefetched

    init = (t_final, tuple(jnp.zeros_like(t_final) for _ in range(depth_channels)), fetch(fetch_ids(tile_last)),
            fetch_ids(tile_last - k_batch))
    jax.lax.fori_loop(0, (tile_last - start + k_batch) // k_batch, batch_step, init)


def rasterize_tiles_bwd(grid: TileGrid, tile_starts, tile_ends, flat_ids, geom, colors, t_final, last, g_colors,
                        g_t_final):
    """Per-intersection gradients of the forward kernel.

    Inputs as `rasterize_tiles_fwd` plus its residuals t_final, last [C * n_tiles, P] and the cotangents
    g_colors [C * n_tiles, D, P], g_t_final [C * n_tiles, P]. Returns d_rows [6 + D, capacity]: per
    sorted intersection slot the gradient of mean x, mean y, conic a, b, c, opacity, then the D colours.
    Columns of slots outside every tile range are undefined and must be masked by the caller.
    """
    n_prog, n_pix = grid.n_programs, grid.pixels_per_tile
    depth_channels = colors.shape[-1]
    capacity = flat_ids.shape[0]
    scalar_spec = pl.BlockSpec((1,), lambda t: (t,))
    whole = lambda shape: pl.BlockSpec(shape, lambda t: (0,) * len(shape))  # noqa: E731
    tile_vec = pl.BlockSpec((None, n_pix), lambda t: (t, 0))
    tile_mat = pl.BlockSpec((None, depth_channels, n_pix), lambda t: (t, 0, 0))
    out_shape = (GEOM_COLUMNS + depth_channels, capacity)
    return pl.pallas_call(
        functools.partial(_backward_kernel, grid),
        grid=(n_prog,),
        in_specs=[scalar_spec, scalar_spec, whole(flat_ids.shape), whole(geom.shape), whole(colors.shape),
                  tile_vec, tile_vec, tile_mat, tile_vec],
        out_specs=whole(out_shape),
        out_shape=jax.ShapeDtypeStruct(out_shape, jnp.float32),
        interpret=grid.interpret,
        compiler_params=grid.tuning.backward_params(),
        name="gaussian_rasterize_bwd",
    )(tile_starts, tile_ends, flat_ids, geom, colors, t_final, last, g_colors, g_t_final)
