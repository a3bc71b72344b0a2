"""EWA projection of 3D Gaussians to the image plane (the 3DGS / gsplat "classic" math, in plain jnp).

Differentiated by JAX autodiff: gradients of the 2D quantities flow back to means, quats and scales here.
"""
from __future__ import annotations

import jax.numpy as jnp


def quat_to_rotmat(quats):
    """Rotation matrices [..., 3, 3] from quaternions [..., 4] (wxyz, normalised here)."""
    q = quats / jnp.sqrt(jnp.sum(quats * quats, axis=-1, keepdims=True) + 1e-24)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return jnp.stack([
        jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def covariance_3d(quats, scales):
    """World-space covariances [N, 3, 3] = R S S^T R^T from quats [N, 4] and scales [N, 3]."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ jnp.swapaxes(M, -1, -2)


def project_gaussians(means, quats, scales, viewmat, K, width: int, height: int, near_plane: float = 0.01,
                      far_plane: float = 1e10, eps2d: float = 0.3):
    """Projects Gaussians into one camera.

    means [N, 3], quats [N, 4] (wxyz), scales [N, 3], viewmat [4, 4] world-to-camera, K [3, 3].
    Returns dict: means2d [N, 2] (pixels), conics [N, 3] (a, b, c of the inverse 2D covariance
    [[a, b], [b, c]]), depths [N] (camera z), radii [N] int32 (0 = culled), cov2d [N, 3].

    Culled: z outside (near_plane, far_plane), a non-positive-definite 2D covariance, or a screen-space
    box entirely off the image. The Jacobian clamps x/z and y/z to +-1.3 tan(fov/2) as the INRIA rasterizer
    does, so Gaussians far outside the frustum do not explode.
    """
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    p = means @ R.T + t                                          # [N, 3] camera space
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    in_depth = (z > near_plane) & (z < far_plane)
    zs = jnp.where(in_depth, z, 1.0)                             # safe divisor for culled ones
    tan_x = 0.5 * width / fx
    tan_y = 0.5 * height / fy
    lim_x = 1.3 * tan_x
    lim_y = 1.3 * tan_y
    tx = zs * jnp.clip(x / zs, -lim_x, lim_x)
    ty = zs * jnp.clip(y / zs, -lim_y, lim_y)
    zero = jnp.zeros_like(zs)
    J = jnp.stack([jnp.stack([fx / zs, zero, -fx * tx / (zs * zs)], -1),
                   jnp.stack([zero, fy / zs, -fy * ty / (zs * zs)], -1)], -2)    # [N, 2, 3]
    cov_cam = R @ covariance_3d(quats, scales) @ R.T                               # [N, 3, 3]
    cov2d = J @ cov_cam @ jnp.swapaxes(J, -1, -2)                                   # [N, 2, 2]
    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = jnp.where(valid, det, 1.0)
    conics = jnp.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    mid = 0.5 * (a + c)
    lam = mid + jnp.sqrt(jnp.maximum(0.1, mid * mid - det))
    radius = jnp.ceil(3.0 * jnp.sqrt(jnp.maximum(lam, 0.0)))
    u = fx * x / zs + cx
    v = fy * y / zs + cy
    means2d = jnp.stack([u, v], -1)
    on_screen = (u + radius > 0) & (u - radius < width) & (v + radius > 0) & (v - radius < height)
    valid = valid & on_screen & jnp.isfinite(radius)
    radii = jnp.where(valid, radius, 0.0).astype(jnp.int32)
    return {"means2d": jnp.where(valid[:, None], means2d, 0.0), "conics": jnp.where(valid[:, None], conics, 0.0),
            "depths": z, "radii": radii, "cov2d": jnp.stack([a, b, c], -1)}


def tile_bounds(means2d, radii, width: int, height: int, tile_size: int):
    """Tile rectangle [min, max) of each Gaussian, as the INRIA `getRect`: [N, 2] ints each (x, y)."""
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    r = radii.astype(means2d.dtype)[:, None]
    lo = jnp.floor((means2d - r) / tile_size).astype(jnp.int32)
    hi = jnp.floor((means2d + r + tile_size - 1) / tile_size).astype(jnp.int32)
    limit = jnp.array([tiles_x, tiles_y], jnp.int32)
    lo = jnp.clip(lo, 0, limit)
    hi = jnp.clip(hi, 0, limit)
    hi = jnp.where((radii > 0)[:, None], hi, lo)                  # culled: empty rectangle
    return lo, hi
