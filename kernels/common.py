"""Shared pieces of the Pallas rasterization kernels."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4

# Per-intersection geometry rows [capacity, GEOM_WIDTH]: mean x, mean y, conic a, b, c, opacity, pad.
GEOM_WIDTH = 8


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Static description of the launch: one Pallas program per (camera, tile)."""

    num_cameras: int
    tile_size: int
    tile_width: int
    tile_height: int
    chunk: int = 32  # Gaussians per early-exit check in the forward loop
    interpret: bool = True

    @property
    def n_tiles(self) -> int:
        return self.tile_width * self.tile_height

    @property
    def n_programs(self) -> int:
        return self.num_cameras * self.n_tiles

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_size * self.tile_size


def default_interpret() -> bool:
    """Pallas interpreter on CPU (and anything but GPU); Triton lowering on GPU."""
    return jax.default_backend() != "gpu"


def tile_pixel_centres(grid: TileGrid, program):
    """Pixel centres px, py [P] (float32) of the tile handled by `program`."""
    tile = program % grid.n_tiles
    tile_x = tile % grid.tile_width
    tile_y = tile // grid.tile_width
    p = jax.lax.broadcasted_iota(jnp.int32, (grid.pixels_per_tile,), 0)
    px = (tile_x * grid.tile_size + p % grid.tile_size).astype(jnp.float32) + 0.5
    py = (tile_y * grid.tile_size + p // grid.tile_size).astype(jnp.float32) + 0.5
    return px, py


def gaussian_alpha(geom_ref, j, px, py):
    """Load intersection j's 2D Gaussian (scalar loads) and evaluate it on pixels [P].

    Returns (dx, dy, sigma, raw_alpha, alpha, ok, (a, b, c, opacity)).
    """
    mx = geom_ref[j, 0]
    my = geom_ref[j, 1]
    a = geom_ref[j, 2]
    b = geom_ref[j, 3]
    c = geom_ref[j, 4]
    opacity = geom_ref[j, 5]
    dx = mx - px
    dy = my - py
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    raw_alpha = opacity * jnp.exp(-sigma)
    alpha = jnp.minimum(raw_alpha, ALPHA_MAX)
    ok = (sigma >= 0.0) & (alpha >= ALPHA_MIN)
    return dx, dy, sigma, raw_alpha, alpha, ok, (a, b, c, opacity)
