"""Camera helpers (OpenCV convention: x right, y down, z forward; world-to-camera view matrices)."""
from __future__ import annotations

import jax.numpy as jnp


def look_at_viewmat(eye, target, up=(0.0, -1.0, 0.0)) -> jnp.ndarray:
    """World-to-camera matrix [4, 4] of a camera at `eye` [3] looking at `target` [3].

    `up` [3] is the world direction that should appear *up* in the image; since the OpenCV camera's
    y axis points down, the camera y axis is aligned with `-up`.
    """
    eye = jnp.asarray(eye, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    up = jnp.asarray(up, jnp.float32)
    forward = target - eye
    forward = forward / jnp.linalg.norm(forward)
    right = jnp.cross(forward, -up)  # x = y cross z with y = -up (down in the image).
    right = right / jnp.linalg.norm(right)
    down = jnp.cross(forward, right)
    rot = jnp.stack([right, down, forward])  # rows: camera axes in world coordinates [3, 3]
    viewmat = jnp.eye(4, dtype=jnp.float32)
    viewmat = viewmat.at[:3, :3].set(rot)
    viewmat = viewmat.at[:3, 3].set(-rot @ eye)
    return viewmat


def intrinsics_from_fov(fov_x_degrees: float, width: int, height: int, fov_y_degrees: float | None = None):
    """Pinhole intrinsics [3, 3] with the principal point at the image centre.

    `fov_x_degrees` is the full horizontal field of view; `fov_y_degrees` defaults to square pixels.
    """
    fx = 0.5 * width / jnp.tan(jnp.deg2rad(fov_x_degrees) / 2)
    fy = fx if fov_y_degrees is None else 0.5 * height / jnp.tan(jnp.deg2rad(fov_y_degrees) / 2)
    return jnp.array([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]], jnp.float32)


def head_space_viewmat(dtype=jnp.float32) -> jnp.ndarray:
    """The fixed camera of head space: head models use metres, y up, z toward the viewer, and the camera
    sits at the origin looking down -z. Its OpenCV world-to-camera matrix is diag(1, -1, -1, 1) [4, 4]."""
    return jnp.diag(jnp.array([1.0, -1.0, -1.0, 1.0], dtype))


def head_space_to_pixels(points, K):
    """Head-space points [..., N, 3] -> pixel coordinates [..., N, 2] (pixel centres at +0.5, as the
    rasterizer) and camera depth [..., N] (positive in front of the camera) through `head_space_viewmat`
    and intrinsics K [3, 3]. Works on jnp and numpy inputs (returns jnp)."""
    points = jnp.asarray(points)
    cam = points * jnp.array([1.0, -1.0, -1.0], points.dtype)
    uvw = cam @ jnp.asarray(K, points.dtype).T
    return uvw[..., :2] / jnp.maximum(uvw[..., 2:3], 1e-6), cam[..., 2]
