"""EWA projection of 3D Gaussians to screen-space 2D Gaussians (plain jnp, differentiated by autodiff).

cov3d = R S S^T R^T; camera-space mean t = W p + w; perspective Jacobian J with x/z, y/z clamped;
cov2d = J W cov3d W^T J^T + eps2d I; conic = cov2d^-1; means2d = (fx x / z + cx, fy y / z + cy).
The clamp limits, the tile-box radii, the depth culling and the opacity culling follow one rule set of
`ggtalker_jax.kernels.conventions` (gsplat 1.5 by default, or the original INRIA 3DGS rules); a culled
Gaussian gets radii (0, 0) and zeros elsewhere.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ggtalker_jax.kernels.conventions import (
    ALPHA_THRESHOLD, DEFAULT_EPS2D, FOV_CLAMP_MARGIN, GSPLAT, INRIA_DISCRIMINANT_FLOOR, Conventions,
)


class Projection(NamedTuple):
    """Screen-space Gaussians for C cameras and N Gaussians."""

    means2d: jnp.ndarray  # [C, N, 2] pixel coordinates (pixel centres at +0.5)
    conics: jnp.ndarray  # [C, N, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    depths: jnp.ndarray  # [C, N] camera-space z
    radii: jnp.ndarray  # [C, N, 2] int32 per-axis pixel radii (x, y); (0, 0) = culled


def quat_to_rotmat(quats: jnp.ndarray) -> jnp.ndarray:
    """Rotation matrices [N, 3, 3] from quaternions [N, 4] (w, x, y, z), normalised here."""
    q = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def covariances_3d(quats: jnp.ndarray, scales: jnp.ndarray) -> jnp.ndarray:
    """World-space covariances [N, 3, 3] = R S S^T R^T from quats [N, 4] and scales [N, 3]."""
    m = quat_to_rotmat(quats) * scales[..., None, :]
    return m @ jnp.swapaxes(m, -1, -2)


def jacobian_clamp_limits(K, width, height, conventions: Conventions):
    """Limits (x_neg, x_pos, y_neg, y_pos) of x/z and y/z in the EWA Jacobian: x/z in [-x_neg, x_pos]."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    if conventions.principal_point_clamp:
        return (cx / fx + FOV_CLAMP_MARGIN * tan_fovx, (width - cx) / fx + FOV_CLAMP_MARGIN * tan_fovx,
                cy / fy + FOV_CLAMP_MARGIN * tan_fovy, (height - cy) / fy + FOV_CLAMP_MARGIN * tan_fovy)
    lim_x = (1.0 + FOV_CLAMP_MARGIN) * tan_fovx
    lim_y = (1.0 + FOV_CLAMP_MARGIN) * tan_fovy
    return lim_x, lim_x, lim_y, lim_y


def _tile_box_radii(cov2d_a, cov2d_b, cov2d_c, det, opacities, conventions: Conventions):
    """Per-axis pixel radii (float, before culling) [N], [N] of the dilated 2D covariance."""
    if conventions.per_axis_box:
        extend = conventions.extend
        if conventions.opacity_aware_box:
            safe = jnp.maximum(opacities, ALPHA_THRESHOLD)
            extend = jnp.minimum(extend, jnp.sqrt(2.0 * jnp.log(safe / ALPHA_THRESHOLD)))
        return jnp.ceil(extend * jnp.sqrt(cov2d_a)), jnp.ceil(extend * jnp.sqrt(cov2d_c))
    mid = 0.5 * (cov2d_a + cov2d_c)
    lambda_max = mid + jnp.sqrt(jnp.maximum(INRIA_DISCRIMINANT_FLOOR, mid * mid - det))
    radius = jnp.ceil(conventions.extend * jnp.sqrt(lambda_max))
    return radius, radius


def _project_one_camera(means, covs3d, opacities, viewmat, K, width, height, near_plane, far_plane, eps2d,
                        conventions: Conventions):
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    p_cam = means @ rot.T + trans  # [N, 3]
    x, y, z = p_cam[:, 0], p_cam[:, 1], p_cam[:, 2]
    if conventions.near_inclusive:
        in_depth = (z >= near_plane) & (z <= far_plane)
    else:
        in_depth = (z > near_plane) & (z < far_plane)
    in_depth = in_depth & (z > 0)  # a projection needs a positive depth whatever near_plane says
    z_safe = jnp.where(in_depth, z, 1.0)  # keeps gradients finite for culled Gaussians
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x_neg, x_pos, y_neg, y_pos = jacobian_clamp_limits(K, width, height, conventions)
    tx = z_safe * jnp.clip(x / z_safe, -x_neg, x_pos)
    ty = z_safe * jnp.clip(y / z_safe, -y_neg, y_pos)
    zeros = jnp.zeros_like(z_safe)
    jac = jnp.stack(
        [
            jnp.stack([fx / z_safe, zeros, -fx * tx / z_safe**2], -1),
            jnp.stack([zeros, fy / z_safe, -fy * ty / z_safe**2], -1),
        ],
        -2,
    )  # [N, 2, 3]
    cov_cam = rot @ covs3d @ rot.T  # [N, 3, 3]
    cov2d = jac @ cov_cam @ jnp.swapaxes(jac, -1, -2) + eps2d * jnp.eye(2, dtype=means.dtype)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = jnp.where(valid, det, 1.0)
    conics = jnp.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    box = jax.lax.stop_gradient((jnp.where(valid, a, 1.0), jnp.where(valid, b, 0.0), jnp.where(valid, c, 1.0),
                                 det_safe, opacities))
    radius_x, radius_y = _tile_box_radii(*box, conventions)
    if conventions.opacity_aware_box:
        valid = valid & (jax.lax.stop_gradient(opacities) >= ALPHA_THRESHOLD)
    means2d = jnp.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)
    mx, my = jax.lax.stop_gradient(means2d[:, 0]), jax.lax.stop_gradient(means2d[:, 1])
    on_screen = (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
    valid = valid & on_screen & ((radius_x > 0) | (radius_y > 0))
    radii = jnp.where(valid[:, None], jnp.stack([radius_x, radius_y], -1), 0.0).astype(jnp.int32)
    zero = jnp.zeros_like
    return Projection(
        means2d=jnp.where(valid[:, None], means2d, zero(means2d)),
        conics=jnp.where(valid[:, None], conics, zero(conics)),
        depths=jnp.where(valid, z, zero(z)),
        radii=radii,
    )


def project_gaussians(
    means, quats, scales, viewmats, Ks, width, height, near_plane=0.01, far_plane=1e10, eps2d=DEFAULT_EPS2D,
    opacities=None, conventions: Conventions = GSPLAT,
) -> Projection:
    """Project N Gaussians into C cameras.

    means [N, 3], quats [N, 4] (wxyz), scales [N, 3] (positive), viewmats [C, 4, 4] world-to-camera,
    Ks [C, 3, 3]; opacities [N] or [C, N] (only the gsplat box uses them; None = opaque). Culled Gaussians
    get radii (0, 0) and zeros elsewhere.
    """
    covs3d = covariances_3d(quats, scales)
    num_cameras = viewmats.shape[0]
    if opacities is None:
        opacities = jnp.ones((means.shape[0],), means.dtype)
    opacities = jnp.broadcast_to(opacities, (num_cameras, means.shape[0]))
    return jax.vmap(
        lambda o, v, k: _project_one_camera(means, covs3d, o, v, k, width, height, near_plane, far_plane, eps2d,
                                            conventions)
    )(opacities, viewmats, Ks)
