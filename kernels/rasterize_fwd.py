"""Pallas forward kernel: front-to-back compositing of each tile's depth-sorted Gaussians.

One program per (camera, tile); the tile's P = tile_size^2 pixels are one vector. The program walks its
[start, end) range of the sorted intersection list in chunks of `tuning.forward_chunk` Gaussians and leaves
the chunk loop as soon as every pixel is done. Per Gaussian it reads the id, then the geometry row and each
colour channel with scalar loads (compiled: one Gaussian ahead), and keeps one [P] accumulator per
channel: every value in the loop is a [P] vector or a scalar, so the loop body needs no layout conversion
(no barrier) in Triton.

Outputs per pixel: colour without background [D, P], final transmittance T [P] and the sorted-list index of
the last blended Gaussian [P] (start - 1 when none); the backward kernel needs the latter two.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ggtalker_jax.kernels.common import GEOM_COLUMNS, TileGrid, gaussian_alpha, tile_pixel_centres
from ggtalker_jax.kernels.conventions import pixel_done


def _forward_kernel(grid: TileGrid, starts_ref, ends_ref, ids_ref, geom_ref, colors_ref, out_colors_ref,
                    out_t_ref, out_last_ref):
    program = pl.program_id(0)
    start = starts_ref[0]
    end = ends_ref[0]
    px, py = tile_pixel_centres(grid, program)
    n_pix = grid.pixels_per_tile
    depth_channels = colors_ref.shape[-1]
    chunk = grid.tuning.forward_chunk
    n_chunks = (end - start + chunk - 1) // chunk

    last_slot = ids_ref.shape[0] - 1
    last_gaussian = geom_ref.shape[0] - 1

    def fetch(g):
        """Geometry row and colours of Gaussian g (clamped: prefetches may run past the tile's range)."""
        g = jnp.minimum(g, last_gaussian)
        return (tuple(geom_ref[g, k] for k in range(GEOM_COLUMNS)),
                tuple(colors_ref[g, d] for d in range(depth_channels)))

    # Software pipelining (compiled code): the loads of Gaussian j + 1 (and the id of j + 2) are issued
    # before j's arithmetic and carried to the next step. The interpreter loads directly (carrying the
    # prefetched scalars makes it slower); `grid.compiled_paths` picks.
    def pipe_start(j):
        if not grid.compiled_paths:
            return ()
        return (*fetch(ids_ref[jnp.minimum(j, last_slot)]), ids_ref[jnp.minimum(j + 1, last_slot)])

    def pipe_step(j, pipe):
        """(geometry, colours) of slot j and the next pipe state."""
        if not grid.compiled_paths:
            return (*fetch(ids_ref[j]), ())
        geom, colors, next_id = pipe
        return geom, colors, (*fetch(next_id), ids_ref[jnp.minimum(j + 2, last_slot)])

    def gaussian_step(j, carry):
        trans, acc, last, done, pipe = carry
        geom, colors, pipe = pipe_step(j, pipe)
        _, _, _, _, _, alpha, ok = gaussian_alpha(grid, *geom, px, py)
        ok = ok & ~done
        next_trans = trans * (1.0 - alpha)
        stop = ok & pixel_done(next_trans, grid.conventions)
        blend = ok & ~stop
        weight = jnp.where(blend, alpha * trans, 0.0)
        acc = tuple(acc_d + weight * color for acc_d, color in zip(acc, colors))
        trans = jnp.where(blend, next_trans, trans)
        last = jnp.where(blend, j, last)
        return trans, acc, last, done | stop, pipe

    def chunk_cond(carry):
        chunk_index, _, _, _, done, _ = carry
        n_active = jnp.sum(jnp.where(done, 0, 1))
        return (chunk_index < n_chunks) & (n_active > 0)

    def chunk_body(carry):
        chunk_index, *state = carry
        lo = start + chunk_index * chunk
        hi = jnp.minimum(lo + chunk, end)
        state = jax.lax.fori_loop(lo, hi, gaussian_step, tuple(state))
        return (chunk_index + 1, *state)

    init = (
        jnp.int32(0),
        jnp.ones((n_pix,), jnp.float32),
        tuple(jnp.zeros((n_pix,), jnp.float32) for _ in range(depth_channels)),
        jnp.full((n_pix,), start - 1, jnp.int32),
        jnp.zeros((n_pix,), jnp.bool_),
        pipe_start(start),
    )
    _, trans, acc, last, _, _ = jax.lax.while_loop(chunk_cond, chunk_body, init)
    for d, acc_d in enumerate(acc):
        out_colors_ref[d, :] = acc_d
    out_t_ref[...] = trans
    out_last_ref[...] = last


def rasterize_tiles_fwd(grid: TileGrid, tile_starts, tile_ends, flat_ids, geom, colors):
    """Forward rasterization of all (camera, tile) programs.

    tile_starts, tile_ends [C * n_tiles] int32 and flat_ids [capacity] int32 from `bin_gaussians`;
    geom [M, 8] and colors [M, D] per (camera, Gaussian) pair (see `common`). Returns colours
    [C * n_tiles, D, P] (no background), final T [C * n_tiles, P] and last contributor index
    [C * n_tiles, P] int32, with P = tile_size^2 in row-major tile order.
    """
    n_prog, n_pix = grid.n_programs, grid.pixels_per_tile
    depth_channels = colors.shape[-1]
    scalar_spec = pl.BlockSpec((1,), lambda t: (t,))
    whole = lambda x: pl.BlockSpec(x.shape, lambda t: (0,) * x.ndim)  # noqa: E731
    return pl.pallas_call(
        functools.partial(_forward_kernel, grid),
        grid=(n_prog,),
        in_specs=[scalar_spec, scalar_spec, whole(flat_ids), whole(geom), whole(colors)],
        out_specs=[
            pl.BlockSpec((None, depth_channels, n_pix), lambda t: (t, 0, 0)),
            pl.BlockSpec((None, n_pix), lambda t: (t, 0)),
            pl.BlockSpec((None, n_pix), lambda t: (t, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((n_prog, depth_channels, n_pix), jnp.float32),
            jax.ShapeDtypeStruct((n_prog, n_pix), jnp.float32),
            jax.ShapeDtypeStruct((n_prog, n_pix), jnp.int32),
        ],
        interpret=grid.interpret,
        compiler_params=grid.tuning.forward_params(),
        name="gaussian_rasterize_fwd",
    )(tile_starts, tile_ends, flat_ids, geom, colors)
