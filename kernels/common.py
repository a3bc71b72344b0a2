"""Shared pieces of the Pallas rasterization kernels: the static launch description and the 2D Gaussian.

Data layout shared by both kernels (M = C * N flattened (camera, Gaussian) pairs):
* `geom` [M, GEOM_WIDTH] float32 per Gaussian: mean x, mean y, conic a, b, c, opacity, 0, 0 (one 32-byte
  row, so a Gaussian's geometry is one memory sector);
* `colors` [M, D] float32 per Gaussian, any D (read one channel at a time with scalar loads);
* `flat_ids` [capacity] int32, the sorted intersection list (`binning.bin_gaussians`); the kernels read
  each Gaussian through it, so nothing is gathered per intersection;
* per-pixel arrays are per program (camera, tile) with the tile's P = tile_size^2 pixels in row-major
  order, channel-major where there are channels ([n_programs, D, P]).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as pallas_triton

from ggtalker_jax.kernels.conventions import ALPHA_THRESHOLD, GSPLAT, Conventions

GEOM_WIDTH = 8
LOG2_E = 1.4426950408889634
GEOM_COLUMNS = 6  # mean x, mean y, conic a, b, c, opacity (the rest of a row is padding)


@dataclasses.dataclass(frozen=True)
class KernelTuning:
    """Triton launch parameters (static); `default_tuning` picks them by channel count.

    Chosen from the sm_90 SASS of the cross-lowered kernels (README, "GPU"): fewer warps per tile mean
    more pixels per thread, so more of each block-wide reduction happens inside a thread; the backward
    batch K divides the barriers per Gaussian by K but raises register use (spills at K = 2 with D = 32).
    """

    forward_num_warps: int = 4
    forward_num_stages: int = 1
    forward_chunk: int = 32  # Gaussians between two "is every pixel done" checks
    backward_num_warps: int = 2
    backward_num_stages: int = 1
    backward_batch: int = 2  # K: Gaussians per step of the backward (a power of two)

    def __post_init__(self):
        k = self.backward_batch
        if k < 1 or k & (k - 1):
            raise ValueError(f"KernelTuning.backward_batch must be a power of two, got {k}")

    def forward_params(self):
        return pallas_triton.CompilerParams(num_warps=self.forward_num_warps, num_stages=self.forward_num_stages)

    def backward_params(self):
        return pallas_triton.CompilerParams(num_warps=self.backward_num_warps, num_stages=self.backward_num_stages)


def default_tuning(depth_channels: int) -> KernelTuning:
    """Launch parameters for D rendered channels: K = 2 on 2 warps up to 8 channels, else K = 1 on 4."""
    if depth_channels <= 8:
        return KernelTuning()
    return KernelTuning(backward_num_warps=4, backward_batch=1)


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Static description of the launch: one Pallas program per (camera, tile)."""

    num_cameras: int
    tile_size: int
    tile_width: int
    tile_height: int
    conventions: Conventions = GSPLAT
    interpret: bool = True  # Pallas interpreter (any platform) instead of Triton
    tuning: KernelTuning = KernelTuning()  # see `default_tuning`
    # Code paths written for Triton (prefetching loads, stacked reductions with masked vector stores) or
    # for the Pallas interpreter (direct loads, per-value sums with scalar stores: several times faster
    # there); same results. None: the Triton paths exactly when compiled (True in the interpreter tests them).
    triton_paths: bool | None = None

    @property
    def compiled_paths(self) -> bool:
        return not self.interpret if self.triton_paths is None else self.triton_paths

    @property
    def n_tiles(self) -> int:
        return self.tile_width * self.tile_height

    @property
    def n_programs(self) -> int:
        return self.num_cameras * self.n_tiles

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_size * self.tile_size


def resolve_interpret(interpret: bool | None) -> bool:
    """None -> automatic: the Pallas interpreter unless the default JAX backend is a GPU."""
    if interpret is None:
        return jax.default_backend() != "gpu"
    return bool(interpret)


def tile_pixel_centres(grid: TileGrid, program):
    """Pixel centres px, py [P] (float32, +0.5 as gsplat) of the tile handled by `program`."""
    tile = program % grid.n_tiles
    tile_x = tile % grid.tile_width
    tile_y = tile // grid.tile_width
    p = jax.lax.broadcasted_iota(jnp.int32, (grid.pixels_per_tile,), 0)
    px = (tile_x * grid.tile_size + p % grid.tile_size).astype(jnp.float32) + 0.5
    py = (tile_y * grid.tile_size + p // grid.tile_size).astype(jnp.float32) + 0.5
    return px, py


def gaussian_alpha(grid: TileGrid, mx, my, a, b, c, opacity, px, py):
    """Evaluate 2D Gaussians on pixels (broadcasting: scalars or [K, 1] parameters, [P] or [1, P] pixels).

    Returns dx, dy, sigma, vis = exp(-sigma) (as 2^(-sigma log2 e)), raw_alpha = opacity vis, alpha = min(raw, alpha_max) and
    ok = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD), each of the broadcast shape.
    """
    dx = mx - px
    dy = my - py
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    vis = jnp.exp2(sigma * -LOG2_E)  # exp(-sigma); one MUFU.EX2 in Triton (as gsplat's __expf)
    raw_alpha = opacity * vis
    alpha = jnp.minimum(raw_alpha, grid.conventions.alpha_max)
    ok = (sigma >= 0.0) & (alpha >= ALPHA_THRESHOLD)
    return dx, dy, sigma, vis, raw_alpha, alpha, ok
