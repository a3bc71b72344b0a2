"""ggtalker_jax.render: differentiable 3D Gaussian Splatting (gsplat-compatible `rasterization`)."""
from ggtalker_jax.render.camera import head_space_viewmat, intrinsics_from_fov, look_at_viewmat
from ggtalker_jax.render.projection import Projection, project_gaussians, quat_to_rotmat
from ggtalker_jax.render.rasterization import check_overflow, default_capacity, rasterization
from ggtalker_jax.render.reference import rasterize_to_pixels_reference

__all__ = [
    "Projection", "check_overflow", "default_capacity", "head_space_viewmat", "intrinsics_from_fov", "look_at_viewmat",
    "project_gaussians", "quat_to_rotmat", "rasterization", "rasterize_to_pixels_reference",
]
