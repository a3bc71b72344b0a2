"""`rasterization()`: the public 3D Gaussian Splatting renderer (gsplat-compatible signature).

Pipeline: EWA projection (`projection.py`, plain jnp, autodiff) -> a 2D backend from `BACKENDS`:

* "pallas": tile binning with a static intersection capacity and the Pallas kernels, one
  `jax.custom_vjp` (`ggtalker_jax.kernels.rasterize`); Triton on GPU, the Pallas interpreter elsewhere
  (`interpret=None`), or as asked (`interpret=True/False`);
* "cpu": the XLA:CPU sub-tile compositor with a hand-written backward (`kernels/cpu_tiles.py`, binned by
  `kernels/packed_binning.py`): much faster than the Pallas interpreter on a CPU;
* "xla": the dense pure-jnp reference (`reference.py`);
* "auto": "pallas" when the default JAX backend is a GPU, else "cpu" (`resolve_backend`).

A backend is a `Backend(render, uses_capacity)` whose `render(proj, opacities, colors, setup)` returns a
`TiledRender`; add one by adding an entry to `BACKENDS`.

Conventions: gsplat 1.5's rules by default (`conventions="gsplat"`), or the original 3DGS rules
(`conventions="inria"`); see `ggtalker_jax.kernels.conventions`.

Capacity and overflow (static shapes; capacities are multiples of 1024):
* Called outside `jit` (concrete inputs), `rasterization()` renders with `capacity` (default
  `default_capacity(C, N)`) and, when the intersections did not fit, renders again with a capacity that
  fits them all (the count plus 1/8 headroom): it never drops work. `meta["capacity"]` is the one used.
* Called inside `jit`, `capacity` must be static; when None it defaults to `default_capacity(C, N)`.
  If the true count exceeds it, `meta["overflow"]` is True, the intersections of the farthest Gaussians
  are dropped, and (unless `warn_on_overflow=False`) a `RuntimeWarning` is emitted from a
  `jax.debug.callback`; `check_overflow(meta)` outside jit turns it into an error. The callback needs the
  host of the platform that runs it, so cross-lowering for another platform (e.g. CUDA from a CPU host)
  needs `warn_on_overflow=False`.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax.kernels.binning import count_intersections, round_capacity
from ggtalker_jax.kernels.common import KernelTuning, TileGrid, default_tuning, resolve_interpret
from ggtalker_jax.kernels.cpu_tiles import rasterize_to_pixels_cpu
from ggtalker_jax.kernels.conventions import CONVENTIONS, DEFAULT_EPS2D, Conventions, get_conventions
from ggtalker_jax.kernels.rasterize import TiledRender, rasterize_to_pixels_pallas
from ggtalker_jax.render.projection import Projection, project_gaussians
from ggtalker_jax.render.reference import rasterize_to_pixels_reference

RENDER_MODES = ("RGB", "RGB+ED")
INTERSECTIONS_PER_GAUSSIAN = 8  # default static capacity inside jit: this many tiles per (camera, Gaussian)


@dataclasses.dataclass(frozen=True)
class RenderSetup:
    """Static parameters of the 2D stage handed to a backend."""

    width: int
    height: int
    tile_size: int
    conventions: Conventions
    capacity: int  # static intersection capacity (backends with uses_capacity)
    interpret: bool  # Pallas interpreter instead of compiled kernels
    tuning: KernelTuning | None  # Triton launch parameters; None = `default_tuning(D)`

    @property
    def tile_width(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def tile_height(self) -> int:
        return -(-self.height // self.tile_size)


class Backend(NamedTuple):
    render: Callable[[Projection, jnp.ndarray, jnp.ndarray, RenderSetup], TiledRender]
    uses_capacity: bool  # bins into a static intersection list (capacity sizing and overflow apply)


def _render_pallas(proj: Projection, opacities, colors, setup: RenderSetup) -> TiledRender:
    tuning = default_tuning(colors.shape[-1]) if setup.tuning is None else setup.tuning
    grid = TileGrid(proj.depths.shape[0], setup.tile_size, setup.tile_width, setup.tile_height,
                    conventions=setup.conventions, interpret=setup.interpret, tuning=tuning)
    return rasterize_to_pixels_pallas(proj.means2d, proj.conics, opacities, colors, proj.depths, proj.radii,
                                      setup.width, setup.height, grid, setup.capacity)


def _render_xla(proj: Projection, opacities, colors, setup: RenderSetup) -> TiledRender:
    image, t_final = rasterize_to_pixels_reference(proj.means2d, proj.conics, opacities, colors, proj.depths,
                                                   proj.radii, setup.width, setup.height, setup.tile_size,
                                                   setup.conventions)
    n_isect = jnp.sum(count_intersections(proj.means2d, proj.radii, setup.tile_size, setup.tile_width,
                                          setup.tile_height))
    return TiledRender(image, t_final, n_isect, jnp.zeros((), jnp.bool_))


def _render_cpu(proj: Projection, opacities, colors, setup: RenderSetup) -> TiledRender:
    return TiledRender(*rasterize_to_pixels_cpu(proj.means2d, proj.conics, opacities, colors, proj.depths,
                                                proj.radii, setup.width, setup.height, setup.tile_size,
                                                setup.capacity, conventions=setup.conventions))


BACKENDS: dict[str, Backend] = {
    "pallas": Backend(_render_pallas, uses_capacity=True),
    "cpu": Backend(_render_cpu, uses_capacity=True),
    "xla": Backend(_render_xla, uses_capacity=False),
}
AUTO = "auto"


def resolve_backend(backend: str) -> str:
    """The backend `backend` names: "auto" -> "pallas" when the default JAX backend is a GPU, else "cpu"."""
    if backend == AUTO:
        return "pallas" if jax.default_backend() == "gpu" else "cpu"
    return backend


def default_capacity(num_cameras: int, num_gaussians: int) -> int:
    """Static intersection capacity used when none is given: 8 tiles per (camera, Gaussian)."""
    return round_capacity(INTERSECTIONS_PER_GAUSSIAN * num_cameras * num_gaussians)


def check_overflow(meta) -> None:
    """Raise RuntimeError when a render dropped intersections (`meta` from `rasterization`)."""
    if bool(np.any(np.asarray(meta["overflow"]))):
        raise RuntimeError(
            f"rasterization: {int(np.max(meta['n_intersections']))} tile intersections exceed capacity "
            f"{meta['capacity']}; pass a larger static `capacity` (or call outside jit to size it "
            "automatically)."
        )


def _warn_overflow(overflow, n_isect, capacity):
    if bool(overflow):
        warnings.warn(
            f"rasterization: {int(n_isect)} tile intersections exceed capacity {int(capacity)}; "
            "intersections of the farthest Gaussians were dropped. Pass a larger static `capacity`.",
            RuntimeWarning,
            stacklevel=2,
        )


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width, height, tile_size,
              backend, render_mode, capacity, interpret, conventions):
    def need(cond, msg):
        if not cond:
            raise ValueError(f"rasterization: {msg}")

    need(means.ndim == 2 and means.shape[1] == 3, f"means must be [N, 3], got {means.shape}")
    n = means.shape[0]
    need(quats.shape == (n, 4), f"quats must be [N, 4] = [{n}, 4] (wxyz), got {quats.shape}")
    need(scales.shape == (n, 3), f"scales must be [N, 3] = [{n}, 3] (positive, not log), got {scales.shape}")
    need(opacities.shape == (n,), f"opacities must be [N] = [{n}], got {opacities.shape}")
    need(viewmats.ndim == 3 and viewmats.shape[1:] == (4, 4), f"viewmats must be [C, 4, 4], got {viewmats.shape}")
    c = viewmats.shape[0]
    need(Ks.shape == (c, 3, 3), f"Ks must be [C, 3, 3] = [{c}, 3, 3], got {Ks.shape}")
    need(
        (colors.ndim == 2 and colors.shape[0] == n) or (colors.ndim == 3 and colors.shape[:2] == (c, n)),
        f"colors must be [N, D] or [C, N, D] with N={n}, C={c}, got {colors.shape}",
    )
    d = colors.shape[-1]
    if backgrounds is not None:
        need(backgrounds.shape == (c, d), f"backgrounds must be [C, D] = [{c}, {d}] or None, got {backgrounds.shape}")
    need(int(width) > 0 and int(height) > 0, f"width/height must be positive, got {width}x{height}")
    need(int(tile_size) > 0 and (tile_size & (tile_size - 1)) == 0, f"tile_size must be a power of two, got {tile_size}")
    need(backend in BACKENDS or backend == AUTO, f"backend must be one of {(*BACKENDS, AUTO)}, got {backend!r}")
    need(render_mode in RENDER_MODES, f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    need(conventions in CONVENTIONS, f"conventions must be one of {tuple(CONVENTIONS)}, got {conventions!r}")
    need(capacity is None or int(capacity) > 0, f"capacity must be a positive int or None, got {capacity!r}")
    need(interpret is None or isinstance(interpret, bool), f"interpret must be None, True or False, got {interpret!r}")
    named = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors, viewmats=viewmats,
                 Ks=Ks, backgrounds=backgrounds)
    for name, value in named.items():
        if value is not None and not isinstance(value, jax.core.Tracer):
            need(bool(np.all(np.isfinite(np.asarray(value)))), f"{name} contains NaN or Inf; fix the input values")


def rasterization(
    means, quats, scales, opacities, colors, viewmats, Ks, width: int, height: int, near_plane: float = 0.01,
    far_plane: float = 1e10, eps2d: float = DEFAULT_EPS2D, backgrounds=None, tile_size: int = 16,
    backend: str = "pallas", render_mode: str = "RGB", capacity: int | None = None, interpret: bool | None = None,
    conventions: str = "gsplat", warn_on_overflow: bool = True, tuning: KernelTuning | None = None,
):
    """Render N 3D Gaussians into C cameras (gsplat.rasterization conventions).

    Args:
      means [N, 3]; quats [N, 4] wxyz (normalised here); scales [N, 3] positive; opacities [N] in
      [0, 1]; colors [N, D] or [C, N, D] (any D); viewmats [C, 4, 4] world-to-camera (OpenCV);
      Ks [C, 3, 3]; backgrounds [C, D] or None (zeros).
      width, height, tile_size, backend, render_mode, capacity, interpret, conventions, tuning: static.
      backend: "pallas", "cpu", "xla" or "auto" (see the module docstring).
      render_mode: "RGB" or "RGB+ED" (expected depth appended as the last channel).
      capacity: static length of the intersection list (rounded up to a multiple of 1024); see the
        module docstring.
      interpret: None = Pallas interpreter unless the default JAX backend is a GPU; True / False force the
        interpreter / the compiled (Triton) kernels.
      conventions: "gsplat" (gsplat 1.5, default) or "inria" (original 3DGS rules).
      warn_on_overflow: inside jit, warn from a host callback when intersections were dropped.
      tuning: Triton launch parameters of the Pallas kernels (`KernelTuning`; None = `default_tuning`).
    Returns:
      render_colors [C, H, W, D (+1)], render_alphas [C, H, W, 1], meta dict (means2d [C, N, 2],
      depths [C, N], radii [C, N, 2] int32, conics [C, N, 3], n_intersections [], capacity int,
      overflow [] bool, tile_width, tile_height, tile_size, width, height).
    """
    means, quats, scales, opacities, colors, viewmats, Ks = (
        jnp.asarray(x) for x in (means, quats, scales, opacities, colors, viewmats, Ks)
    )
    backgrounds = None if backgrounds is None else jnp.asarray(backgrounds)
    _validate(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width, height, tile_size,
              backend, render_mode, capacity, interpret, conventions)
    backend = resolve_backend(backend)
    traced = any(isinstance(x, jax.core.Tracer)
                 for x in (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds))
    uses_capacity = BACKENDS[backend].uses_capacity
    num_cameras, n = viewmats.shape[0], means.shape[0]
    if not uses_capacity:
        capacity_used = 0
    elif capacity is None:
        capacity_used = default_capacity(num_cameras, n)
    else:
        capacity_used = round_capacity(capacity)
    static = dict(width=int(width), height=int(height), near_plane=float(near_plane), far_plane=float(far_plane),
                  eps2d=float(eps2d), tile_size=int(tile_size), backend=backend, render_mode=render_mode,
                  interpret=resolve_interpret(interpret), conventions=get_conventions(conventions),
                  tuning=tuning)
    args = (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds)
    image, alphas, meta = _rasterization_impl(*args, capacity=capacity_used, warn=traced and warn_on_overflow,
                                              **static)
    if uses_capacity and not traced and bool(meta["overflow"]):
        # Outside jit: resize (with headroom, so that slowly growing scenes recompile rarely) and retry.
        n_isect = int(meta["n_intersections"])
        capacity_used = round_capacity(n_isect + n_isect // 8)
        image, alphas, meta = _rasterization_impl(*args, capacity=capacity_used, warn=False, **static)
    meta.update(capacity=capacity_used, tile_width=-(-int(width) // int(tile_size)),
                tile_height=-(-int(height) // int(tile_size)), tile_size=int(tile_size), width=int(width),
                height=int(height))
    return image, alphas, meta


@functools.partial(
    jax.jit,
    static_argnames=("width", "height", "near_plane", "far_plane", "eps2d", "tile_size", "backend", "render_mode",
                     "capacity", "interpret", "conventions", "tuning", "warn"),
)
def _rasterization_impl(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, *, width, height,
                        near_plane, far_plane, eps2d, tile_size, backend, render_mode, capacity, interpret,
                        conventions, tuning, warn):
    num_cameras, n = viewmats.shape[0], means.shape[0]
    proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, eps2d,
                             opacities=opacities, conventions=conventions)
    colors = jnp.broadcast_to(colors, (num_cameras, n, colors.shape[-1]))
    if render_mode == "RGB+ED":
        colors = jnp.concatenate([colors, proj.depths[..., None]], axis=-1)
    depth_channels = colors.shape[-1]
    if backgrounds is None:
        backgrounds = jnp.zeros((num_cameras, depth_channels), colors.dtype)
    elif render_mode == "RGB+ED":
        backgrounds = jnp.concatenate([backgrounds, jnp.zeros((num_cameras, 1), backgrounds.dtype)], axis=-1)
    setup = RenderSetup(width, height, tile_size, conventions, capacity, interpret, tuning)
    opacities = jnp.broadcast_to(opacities, (num_cameras, n))
    rendered = BACKENDS[backend].render(proj, opacities, colors, setup)
    if warn and BACKENDS[backend].uses_capacity:
        jax.debug.callback(_warn_overflow, rendered.overflow, rendered.n_intersections, capacity)
    t_final = rendered.transmittance
    image = rendered.colors + t_final[..., None] * backgrounds[:, None, None, :]
    alphas = (1.0 - t_final)[..., None]
    if render_mode == "RGB+ED":
        image = jnp.concatenate([image[..., :-1], image[..., -1:] / jnp.maximum(alphas, 1e-10)], axis=-1)
    meta = dict(means2d=proj.means2d, depths=proj.depths, radii=proj.radii, conics=proj.conics,
                n_intersections=rendered.n_intersections, overflow=rendered.overflow)
    return image, alphas, meta
