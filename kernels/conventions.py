"""The rasterization rules, defined once for the kernels, the dense reference and the projection.

Two rule sets are supported. `GSPLAT` (the default) follows gsplat 1.5's CUDA kernels
(`ProjectionEWA3DGSFused.cu`, `RasterizeToPixels3DGSFwd.cu`, `include/Utils.cuh`):

* EWA Jacobian: x/z clamped to [-(cx / fx + 0.3 tan_fovx), (W - cx) / fx + 0.3 tan_fovx] (limits from
  the principal point, tan_fovx = W / (2 fx)), the same for y;
* the 2D covariance is dilated by `eps2d` (0.3) on the diagonal; a Gaussian whose dilated covariance has
  det <= 0 is culled;
* tile box per axis: radius_x = ceil(extend sqrt(Sigma_xx)), radius_y = ceil(extend sqrt(Sigma_yy)) with
  extend = min(3.33, sqrt(2 ln(255 opacity))) (opacity-aware, arXiv 2402.00525 B.2; 3.33 ~ sqrt(2 ln 255)),
  so every pixel where alpha >= 1/255 lies inside the box and the image does not depend on the tiling;
  a Gaussian with opacity < 1/255 is culled;
* kept when near_plane <= z <= far_plane; culled when its box lies entirely off-screen;
* alpha = min(0.999, opacity exp(-sigma)), skipped when sigma < 0 or alpha < 1/255, zero gradient
  through the cap; a pixel stops before the first Gaussian with T (1 - alpha) <= 1e-4.

`INRIA` keeps the original 3DGS rules (graphdeco-inria/diff-gaussian-rasterization): clamp limits
+-1.3 tan_fov about the image centre, a square box of radius ceil(3 sqrt(lambda_max)) (eigenvalue
discriminant floored at 0.1; it can miss pixels between 3 and 3.33 sigma, so the image depends on the
tiling), kept when near_plane < z < far_plane, alpha capped at 0.99, stop when T (1 - alpha) < 1e-4.
"""
from __future__ import annotations

import dataclasses

ALPHA_THRESHOLD = 1.0 / 255.0  # smallest blended alpha (both rule sets)
TRANSMITTANCE_MIN = 1e-4  # a pixel is done once its transmittance reaches this (both rule sets)
FOV_CLAMP_MARGIN = 0.3  # the Jacobian clamp reaches 0.3 tan_fov beyond the image edge (both rule sets)
DEFAULT_EPS2D = 0.3  # covariance dilation added to the 2D covariance diagonal (both rule sets)
GSPLAT_ALPHA_MAX = 0.999
GSPLAT_EXTEND = 3.33
INRIA_ALPHA_MAX = 0.99
INRIA_EXTEND = 3.0
INRIA_DISCRIMINANT_FLOOR = 0.1


@dataclasses.dataclass(frozen=True)
class Conventions:
    """One rule set (static; hashable so it can ride along as a jit static argument)."""

    name: str
    alpha_max: float  # alpha cap
    stop_inclusive: bool  # True: stop when next_T <= TRANSMITTANCE_MIN (gsplat); False: when < (INRIA)
    per_axis_box: bool  # True: per-axis box from Sigma_ii (gsplat); False: square box from lambda_max
    extend: float  # box half-size in standard deviations
    opacity_aware_box: bool  # tighten `extend` by opacity and cull opacity < ALPHA_THRESHOLD (gsplat)
    principal_point_clamp: bool  # Jacobian clamp limits from (cx, cy) (gsplat) or the image centre (INRIA)
    near_inclusive: bool  # keep z == near_plane / far_plane (gsplat) or not (INRIA)


GSPLAT = Conventions("gsplat", GSPLAT_ALPHA_MAX, stop_inclusive=True, per_axis_box=True, extend=GSPLAT_EXTEND,
                     opacity_aware_box=True, principal_point_clamp=True, near_inclusive=True)
INRIA = Conventions("inria", INRIA_ALPHA_MAX, stop_inclusive=False, per_axis_box=False, extend=INRIA_EXTEND,
                    opacity_aware_box=False, principal_point_clamp=False, near_inclusive=False)
CONVENTIONS = {c.name: c for c in (GSPLAT, INRIA)}


def get_conventions(name: str) -> Conventions:
    """The rule set called `name` ("gsplat" or "inria")."""
    if name not in CONVENTIONS:
        raise ValueError(f"rasterization: conventions must be one of {tuple(CONVENTIONS)}, got {name!r}")
    return CONVENTIONS[name]


def pixel_done(next_transmittance, conventions: Conventions):
    """Whether blending a Gaussian would take the pixel to or below the stop threshold (array op)."""
    if conventions.stop_inclusive:
        return next_transmittance <= TRANSMITTANCE_MIN
    return next_transmittance < TRANSMITTANCE_MIN
