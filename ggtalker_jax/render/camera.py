"""Camera helpers. Cameras follow OpenCV/gsplat conventions: world-to-camera `viewmat` [4, 4] with
x right, y down, z forward; intrinsics K [3, 3] in pixels with pixel (row i, col j) centred at (j+0.5, i+0.5).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def head_space_viewmat(dtype=jnp.float32):
    """The fixed camera of head space: head models use metres, y up, z toward the viewer; the camera sits
    at the origin looking down -z. Its OpenCV world-to-camera matrix is diag(1, -1, -1, 1) [4, 4]."""
    return jnp.diag(jnp.array([1.0, -1.0, -1.0, 1.0], dtype))


def intrinsics_from_fov(fov_y_degrees: float, width: int, height: int) -> np.ndarray:
    """Pinhole K [3, 3] with square pixels and the principal point at the image centre."""
    f = 0.5 * height / np.tan(0.5 * np.deg2rad(fov_y_degrees))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], np.float32)


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV world-to-camera [4, 4] for a camera at `eye` looking at `target` (`up` is world up)."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    view = np.eye(4)
    view[:3, :3] = R
    view[:3, 3] = -R @ eye
    return view.astype(np.float32)
