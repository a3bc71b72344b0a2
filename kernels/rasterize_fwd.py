"""Pallas forward kernel: front-to-back compositing of each tile's depth-sorted Gaussians.

One program per (camera, tile); the tile's P = tile_size^2 pixels are one vector. The program walks
its [start, end) range of the sorted intersection list in chunks of `grid.chunk` Gaussians and
leaves the chunk loop as soon as every pixel is done. Per Gaussian it does scalar loads of the
geometry row and one [1, D] row load of the colour, so block shapes are static and the body is
Triton-lowerable (fori_loop / while_loop, no Python control flow on data).

Outputs per pixel: colour without background [P, D], final transmittance T [P] and the sorted-list
index of the last blended Gaussian [P] (start - 1 when none); the backward kernel needs the latter two.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ggtalker_jax.kernels.common import T_MIN, TileGrid, gaussian_alpha, tile_pixel_centres


def _forward_kernel(grid: TileGrid, starts_ref, ends_ref, geom_ref, colors_ref, out_colors_ref, out_t_ref,
                    out_last_ref):
    program = pl.program_id(0)
    start = starts_ref[0]
    end = ends_ref[0]
    px, py = tile_pixel_centres(grid, program)
    n_pix = grid.pixels_per_tile
    depth_channels = out_colors_ref.shape[-1]
    n_chunks = (end - start + grid.chunk - 1) // grid.chunk

    def gaussian_step(j, carry):
        trans, acc, last, done = carry
        _, _, _, _, alpha, ok, _ = gaussian_alpha(geom_ref, j, px, py)
        ok = ok & ~done
        next_trans = trans * (1.0 - alpha)
        stop = ok & (next_trans < T_MIN)
        blend = ok & ~stop
        weight = jnp.where(blend, alpha * trans, 0.0)
        color = colors_ref[pl.ds(j, 1), :]  # [1, D]
        acc = acc + weight[:, None] * color
        trans = jnp.where(blend, next_trans, trans)
        last = jnp.where(blend, j, last)
        return trans, acc, last, done | stop

    def chunk_cond(carry):
        chunk_index, _, _, _, done = carry
        n_active = jnp.sum(jnp.where(done, 0, 1))
        return (chunk_index < n_chunks) & (n_active > 0)

    def chunk_body(carry):
        chunk_index, *state = carry
        lo = start + chunk_index * grid.chunk
        hi = jnp.minimum(lo + grid.chunk, end)
        state = jax.lax.fori_loop(lo, hi, gaussian_step, tuple(state))
        return (chunk_index + 1, *state)

    init = (
        jnp.int32(0),
        jnp.ones((n_pix,), jnp.float32),
        jnp.zeros((n_pix, depth_channels), jnp.float32),
        jnp.full((n_pix,), start - 1, jnp.int32),
        jnp.zeros((n_pix,), jnp.bool_),
    )
    _, trans, acc, last, _ = jax.lax.while_loop(chunk_cond, chunk_body, init)
    out_colors_ref[...] = acc
    out_t_ref[...] = trans
    out_last_ref[...] = last


def rasterize_tiles_fwd(grid: TileGrid, tile_starts, tile_ends, isect_geom, isect_colors):
    """Forward rasterization of all (camera, tile) programs.

    tile_starts, tile_ends [C * n_tiles] int32; isect_geom [capacity, 8] (mean x, mean y, conic a,
    b, c, opacity, pad, pad) and isect_colors [capacity, D] gathered in sorted intersection order.
    Returns colours [C * n_tiles, P, D] (no background), final T [C * n_tiles, P] and last
    contributor index [C * n_tiles, P] int32, with P = tile_size^2 in row-major tile order.
    """
    n_prog, n_pix = grid.n_programs, grid.pixels_per_tile
    depth_channels = isect_colors.shape[-1]
    scalar_spec = pl.BlockSpec((1,), lambda t: (t,))
    return pl.pallas_call(
        functools.partial(_forward_kernel, grid),
        grid=(n_prog,),
        in_specs=[scalar_spec, scalar_spec, pl.BlockSpec(isect_geom.shape, lambda t: (0, 0)),
                  pl.BlockSpec(isect_colors.shape, lambda t: (0, 0))],
        out_specs=[
            pl.BlockSpec((None, n_pix, depth_channels), lambda t: (t, 0, 0)),
            pl.BlockSpec((None, n_pix), lambda t: (t, 0)),
            pl.BlockSpec((None, n_pix), lambda t: (t, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((n_prog, n_pix, depth_channels), jnp.float32),
            jax.ShapeDtypeStruct((n_prog, n_pix), jnp.float32),
            jax.ShapeDtypeStruct((n_prog, n_pix), jnp.int32),
        ],
        interpret=grid.interpret,
        name="gaussian_rasterize_fwd",
    )(tile_starts, tile_ends, isect_geom, isect_colors)
