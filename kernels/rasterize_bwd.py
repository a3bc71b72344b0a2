"""Pallas backward kernel: back-to-front walk of each tile from its last contributor.

Per pixel it starts from the saved final transmittance, recovers T before Gaussian j as
T / (1 - alpha_j), and keeps the colour-behind accumulator; with incoming cotangents dL/dC [P, D]
and dL/dT_final [P] (the latter carries the background term, bg . dL/dC, and minus the alpha-image
cotangent):

    dL/dalpha_j = T_j * sum_d (c_jd - accum_d) dL/dC_d - T_final / (1 - alpha_j) * dL/dT_final.

Accumulation across tiles: every intersection slot belongs to exactly one tile, so each program writes
the gradient of its own slots (per-intersection outputs [capacity, ...], no write conflicts) and the
caller reduces them with `jax.ops.segment_sum` over Gaussian ids. That is deterministic (unlike float
atomics, whose summation order changes from run to run) and is the same code on CPU and GPU.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ggtalker_jax.kernels.common import ALPHA_MAX, GEOM_WIDTH, TileGrid, gaussian_alpha, tile_pixel_centres


def _backward_kernel(grid: TileGrid, starts_ref, ends_ref, geom_ref, colors_ref, t_final_ref, last_ref,
                     g_colors_ref, g_t_final_ref, d_geom_ref, d_colors_ref):
    program = pl.program_id(0)
    start = starts_ref[0]
    end = ends_ref[0]
    px, py = tile_pixel_centres(grid, program)
    depth_channels = colors_ref.shape[-1]
    t_final = t_final_ref[...]  # [P]
    last = last_ref[...]  # [P]
    g_colors = g_colors_ref[...]  # [P, D]
    g_t_final = g_t_final_ref[...]  # [P]
    tile_last = jnp.max(last)  # slots after the tile's last contributor get zero gradient

    def zero_slot(j, carry):
        for k in range(GEOM_WIDTH):
            d_geom_ref[j, k] = jnp.float32(0.0)
        d_colors_ref[pl.ds(j, 1), :] = jnp.zeros((1, depth_channels), jnp.float32)
        return carry

    jax.lax.fori_loop(tile_last + 1, end, zero_slot, 0)

    def gaussian_step(step, carry):
        trans, accum = carry
        j = tile_last - step
        dx, dy, sigma, raw_alpha, alpha, ok, (a, b, c, _) = gaussian_alpha(geom_ref, j, px, py)
        valid = ok & (j <= last)
        one_minus = 1.0 - alpha
        trans = jnp.where(valid, trans / one_minus, trans)  # T before Gaussian j
        color = colors_ref[pl.ds(j, 1), :]  # [1, D]
        weight = jnp.where(valid, alpha * trans, 0.0)
        d_color = jnp.sum(weight[:, None] * g_colors, axis=0, keepdims=True)  # [1, D]
        d_alpha = trans * jnp.sum((color - accum) * g_colors, axis=1) - t_final / one_minus * g_t_final
        d_alpha = jnp.where(valid & (raw_alpha <= ALPHA_MAX), d_alpha, 0.0)
        vis = jnp.exp(-sigma)
        d_opacity = jnp.sum(vis * d_alpha)
        d_sigma = -raw_alpha * d_alpha
        d_geom_ref[j, 0] = jnp.sum(d_sigma * (a * dx + b * dy))
        d_geom_ref[j, 1] = jnp.sum(d_sigma * (b * dx + c * dy))
        d_geom_ref[j, 2] = jnp.sum(0.5 * d_sigma * dx * dx)
        d_geom_ref[j, 3] = jnp.sum(d_sigma * dx * dy)
        d_geom_ref[j, 4] = jnp.sum(0.5 * d_sigma * dy * dy)
        d_geom_ref[j, 5] = d_opacity
        d_geom_ref[j, 6] = jnp.float32(0.0)
        d_geom_ref[j, 7] = jnp.float32(0.0)
        d_colors_ref[pl.ds(j, 1), :] = d_color
        accum = jnp.where(valid[:, None], alpha[:, None] * color + one_minus[:, None] * accum, accum)
        return trans, accum

    n_steps = tile_last - start + 1
    init = (t_final, jnp.zeros((grid.pixels_per_tile, depth_channels), jnp.float32))
    jax.lax.fori_loop(0, n_steps, gaussian_step, init)


def rasterize_tiles_bwd(grid: TileGrid, tile_starts, tile_ends, isect_geom, isect_colors, t_final, last,
                        g_colors, g_t_final):
    """Per-intersection gradients of the forward kernel.

    Inputs as `rasterize_tiles_fwd` plus its residuals t_final, last [C * n_tiles, P] and the
    cotangents g_colors [C * n_tiles, P, D], g_t_final [C * n_tiles, P]. Returns d_geom
    [capacity, 8] and d_colors [capacity, D]; rows of slots outside every tile range are undefined
    and must be masked by the caller.
    """
    n_prog, n_pix = grid.n_programs, grid.pixels_per_tile
    depth_channels = isect_colors.shape[-1]
    scalar_spec = pl.BlockSpec((1,), lambda t: (t,))
    tile_vec = pl.BlockSpec((None, n_pix), lambda t: (t, 0))
    tile_mat = pl.BlockSpec((None, n_pix, depth_channels), lambda t: (t, 0, 0))
    geom_spec = pl.BlockSpec(isect_geom.shape, lambda t: (0, 0))
    colors_spec = pl.BlockSpec(isect_colors.shape, lambda t: (0, 0))
    return pl.pallas_call(
        functools.partial(_backward_kernel, grid),
        grid=(n_prog,),
        in_specs=[scalar_spec, scalar_spec, geom_spec, colors_spec, tile_vec, tile_vec, tile_mat, tile_vec],
        out_specs=[geom_spec, colors_spec],
        out_shape=[
            jax.ShapeDtypeStruct(isect_geom.shape, jnp.float32),
            jax.ShapeDtypeStruct(isect_colors.shape, jnp.float32),
        ],
        interpret=grid.interpret,
        name="gaussian_rasterize_bwd",
    )(tile_starts, tile_ends, isect_geom, isect_colors, t_final, last, g_colors, g_t_final)
