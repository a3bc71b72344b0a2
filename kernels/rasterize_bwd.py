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
(software pipelining by hand: Triton does not pipeline scalar loads). `grid.compiled_paths` selects these
Triton-shaped paths; the interpreter's own (direct loads, per-value sums, scalar stores) is several times
faster there and gives the same results.

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


def _bit_reverse(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


def _stack_blocks(vectors, shape):
    """Stack 2^m arrays of shape [P] into [P, *shape] (prod(shape) = 2^m) in C order of `vectors`.

    Only pairwise stacks along a new last axis lower to Triton (`join`, which keeps the new axes inside
    each thread); a tree of them puts the first level on the first trailing axis, so the inputs go in
    bit-reversed order to come out in C order.
    """
    bits = len(vectors).bit_length() - 1
    level = [vectors[_bit_reverse(i, bits)] for i in range(len(vectors))]
    while len(level) > 1:
        level = [jnp.stack([level[i], level[i + 1]], axis=-1) for i in range(0, len(level), 2)]
    stacked = level[0]
    return stacked.reshape(stacked.shape[:1] + tuple(shape))


def _store_columns(ref, row: int, col, values, first_valid, end_valid):
    """ref[row:row + size, col:col + K] = values [size, K] (one masked vector store) where the slot
    col + k - K lies in [first_valid, end_valid)."""
    size, k_batch = values.shape
    slots = col - k_batch + jax.lax.broadcasted_iota(jnp.int32, (1, k_batch), 1)
    pallas_triton.store(ref.at[pl.ds(row, size), pl.ds(col, k_batch)], values,
                        mask=(slots >= first_valid) & (slots < end_valid))


def _store_scalars(ref, row: int, col, values, first_valid, end_valid):
    """As `_store_columns` from values[q][k] scalars, one unmasked scalar store each, masked-off ones sent to
    the spare column 0. (In the Pallas interpreter a masked or block store reads the old values and makes
    it copy the whole output array; a plain scalar store stays in place.)"""
    k_batch = len(values[0])
    for k in range(k_batch):
        slot = col - k_batch + k
        target = jnp.where((slot >= first_valid) & (slot < end_valid), col + k, 0)
        for q, per_k in enumerate(values):
            ref[row + q, target] = per_k[k]


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

    def zero_batch(b, carry):
        lo = tile_last + 1 + b * k_batch
        if grid.compiled_paths:
            row = 0
            for size in _power_of_two_parts(n_rows):
                _store_columns(d_rows_ref, row, lo + k_batch, jnp.zeros((size, k_batch), jnp.float32), start, end)
                row += size
        else:
            _store_scalars(d_rows_ref, 0, lo + k_batch, [[jnp.float32(0.0)] * k_batch] * n_rows, start, end)
        return carry

    jax.lax.fori_loop(0, (end - tile_last - 1 + k_batch - 1) // k_batch, zero_batch, 0)

    def fetch_ids(hi):
        """Ids of the K slots hi, hi - 1, ... (clamped into the list: prefetches may run past the range)."""
        return tuple(ids_ref[jnp.maximum(hi - k, 0)] for k in range(k_batch))

    def fetch(ids):
        """Geometry rows and colours of the Gaussians `ids` (interpreted: colours as [D, 1] arrays)."""
        ids = [jnp.minimum(g, last_gaussian) for g in ids]
        if grid.compiled_paths:
            colors = tuple(tuple(colors_ref[g, d] for d in range(depth_channels)) for g in ids)
        else:
            colors = tuple(colors_ref[g, :][:, None] for g in ids)
        return tuple(tuple(geom_ref[g, q] for q in range(GEOM_COLUMNS)) for g in ids), colors

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

    g_colors_block = g_colors_ref[...]  # [D, P]

    def one_gaussian_interpreted(j, geom, color, trans, behind):
        """`one_gaussian` with the channels as one [D, P] block (fewer, larger ops for the interpreter);
        color [D, 1], behind [D, P]; the colour terms come back as one [D, P] entry."""
        mx, my, a, b, c, _ = geom
        dx, dy, _, vis, raw_alpha, alpha, ok = gaussian_alpha(grid, *geom, px, py)
        valid = ok & (j <= last) & (j >= start)
        inv_keep = 1.0 / (1.0 - alpha)
        trans = jnp.where(valid, trans * inv_keep, trans)
        weight = jnp.where(valid, alpha * trans, 0.0)
        d_alpha = jnp.sum(g_colors_block * (color * trans - behind * inv_keep), axis=0) - g_t_term * inv_keep
        d_alpha = jnp.where(valid & (raw_alpha <= alpha_max), d_alpha, 0.0)
        d_sigma = -raw_alpha * d_alpha
        terms = [d_sigma * (a * dx + b * dy), d_sigma * (b * dx + c * dy), 0.5 * d_sigma * dx * dx,
                 d_sigma * dx * dy, 0.5 * d_sigma * dy * dy, vis * d_alpha, weight * g_colors_block]
        return terms, trans, behind + weight * color

    # Compiled: the next step's loads are issued before this step's arithmetic and carried (the pipe);
    # interpreted: direct loads (carrying them makes the interpreter slower).
    def pipe_start():
        return (fetch(fetch_ids(tile_last)), fetch_ids(tile_last - k_batch)) if grid.compiled_paths else ()

    def pipe_step(hi, pipe):
        """(geometry rows, colours) of the slots hi, hi - 1, ... and the next pipe state."""
        if not grid.compiled_paths:
            return (*fetch(fetch_ids(hi)), ())
        (geoms, colors), next_ids = pipe
        return geoms, colors, (fetch(next_ids), fetch_ids(hi - 2 * k_batch))

    def batch_step(step, carry):
        trans, behind, pipe = carry
        hi = tile_last - step * k_batch
        geoms, colors, pipe = pipe_step(hi, pipe)
        per_gaussian = []
        for k in range(k_batch):
            step_fn = one_gaussian if grid.compiled_paths else one_gaussian_interpreted
            terms, trans, behind = step_fn(hi - k, geoms[k], colors[k], trans, behind)
            per_gaussian.append(terms)
        lo = hi - k_batch + 1  # the step's slots lo .. hi, stored in ascending order
        ascending = per_gaussian[::-1]  # slots lo .. hi
        if not grid.compiled_paths:
            sums = [[jnp.sum(t) for t in terms[:GEOM_COLUMNS]] + list(jnp.sum(terms[-1], axis=1))
                    for terms in ascending]
            _store_scalars(d_rows_ref, 0, lo + k_batch, [[s[q] for s in sums] for q in range(n_rows)], start, end)
        row = 0
        for size in _power_of_two_parts(n_rows) if grid.compiled_paths else ():
            block = [ascending[k][row + q] for q in range(size) for k in range(k_batch)]
            totals = jnp.sum(_stack_blocks(block, (size, k_batch)), axis=0)  # [size, K]
            _store_columns(d_rows_ref, row, lo + k_batch, totals, start, end)
            row += size
        return trans, behind, pipe

    if grid.compiled_paths:
        behind0 = tuple(jnp.zeros_like(t_final) for _ in range(depth_channels))
    else:
        behind0 = jnp.zeros((depth_channels, t_final.shape[0]), jnp.float32)
    init = (t_final, behind0, pipe_start())
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
    # Columns are slots shifted by K, with K spare columns at each end: every step stores K contiguous
    # columns, and the first / last steps of a tile may reach K - 1 slots beyond the list (column 0 also
    # takes the interpreter's masked-off stores).
    pad = grid.tuning.backward_batch
    out_shape = (GEOM_COLUMNS + depth_channels, capacity + 2 * pad)
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
    )(tile_starts, tile_ends, flat_ids, geom, colors, t_final, last, g_colors, g_t_final)[:, pad:pad + capacity]
