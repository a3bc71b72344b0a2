"""Differentiable 3D Gaussian splatting with gsplat's conventions.

`rasterization(...)` (backend "xla": readable reference; "pallas": tiled kernels), EWA `projection`,
camera helpers.
"""
from ggtalker_jax.render.camera import head_space_viewmat, intrinsics_from_fov, look_at
from ggtalker_jax.render.projection import project_gaussians, quat_to_rotmat
from ggtalker_jax.render.rasterization import rasterization

__all__ = ["rasterization", "project_gaussians", "quat_to_rotmat", "head_space_viewmat", "intrinsics_from_fov",
           "look_at"]
