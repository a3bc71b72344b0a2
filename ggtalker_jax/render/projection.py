"""EWA projection of 3D Gaussians to screen-space 2D Gaussians (plain jnp, differentiated by autodiff).

Follows graphdeco-inria/diff-gaussian-rasterization and gsplat: cov3d = R S S^T R^T, perspective
Jacobian with x/z, y/z clamped to +-1.3 tan(fov), cov2d = J W cov3d W^T J^T + eps2d I, radius =
ceil(3 sqrt(lambda_max)) with the eigenvalue discriminant floored at 0.1, and culling of Gaussians
outside (near_plane, far_plane), with a non positive-definite cov2d, or entirely off-screen.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Projection(NamedTuple):
    """Screen-space Gaussians for C cameras and N Gaussians."""

    means2d: jnp.ndarray  # [C, N, 2] pixel coordinates (pixel centres at +0.5)
    conics: jnp.ndarray  # [C, N, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    depths: jnp.ndarray  # [C, N] camera-space z
    radii: jnp.ndarray  # [C, N] int32 pixel radius, 0 = culled


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


def _project_one_camera(means, covs3d, viewmat, K, width, height, near_plane, far_plane, eps2d):
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    p_cam = means @ rot.T + trans  # [N, 3]
    x, y, z = p_cam[:, 0], p_cam[:, 1], p_cam[:, 2]
    in_depth = (z > near_plane) & (z < far_plane)
    z_safe = jnp.where(in_depth, z, 1.0)  # keeps gradients finite for culled Gaussians
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x = 1.3 * 0.5 * width / fx
    lim_y = 1.3 * 0.5 * height / fy
    tx = z_safe * jnp.clip(x / z_safe, -lim_x, lim_x)
    ty = z_safe * jnp.clip(y / z_safe, -lim_y, lim_y)
    zeros = jnp.zeros_like(z_safe)
    jac = jnp.stack(
        [
            jnp.stack([fx / z_safe, zeros, -fx * tx / z_safe**2], -1),
            jnp.stack([zeros, fy / z_safe, -fy * ty / z_safe**2], -1),
        ],
        -2,
    )  # [N, 2, 3]
    cov_cam = rot @ covs3d @ rot.T  # [N, 3, 3]
    cov2d = jac @ cov_cam @ jnp.swapaxes(jac, -1, -2) + eps2d * jnp.eye(2)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = jnp.where(valid, det, 1.0)
    conics = jnp.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    mid = 0.5 * (a + c)
    lambda_max = mid + jnp.sqrt(jnp.maximum(0.1, mid * mid - det))
    radius = jnp.ceil(3.0 * jnp.sqrt(jax.lax.stop_gradient(jnp.where(valid, lambda_max, 0.0))))
    means2d = jnp.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)
    mx, my = jax.lax.stop_gradient(means2d[:, 0]), jax.lax.stop_gradient(means2d[:, 1])
    on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
    valid = valid & on_screen & (radius > 0)
    radii = jnp.where(valid, radius, 0.0).astype(jnp.int32)
    zero = jnp.zeros_like
    return Projection(
        means2d=jnp.where(valid[:, None], means2d, zero(means2d)),
        conics=jnp.where(valid[:, None], conics, zero(conics)),
        depths=jnp.where(valid, z, zero(z)),
        radii=radii,
    )


def project_gaussians(
    means, quats, scales, viewmats, Ks, width, height, near_plane=0.01, far_plane=1e10, eps2d=0.3
) -> Projection:
    """Project N Gaussians into C cameras.

    means [N, 3], quats [N, 4] (wxyz), scales [N, 3] (positive), viewmats [C, 4, 4] world-to-camera,
    Ks [C, 3, 3]. Culled Gaussians get radius 0 and zeros elsewhere.
    """
    covs3d = covariances_3d(quats, scales)
    return jax.vmap(
        lambda v, k: _project_one_camera(means, covs3d, v, k, width, height, near_plane, far_plane, eps2d)
    )(viewmats, Ks)
