"""Random Gaussian scenes and a loss with every gradient, shared by the rasterizer backend tests."""
import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax.render import intrinsics_from_fov, look_at_viewmat, rasterization

W, H = 40, 24  # 3 x 2 tiles of 16, the last column and row partial
NAMES = ("means", "quats", "scales", "opacities", "colors", "backgrounds")


def random_scene(n=40, num_cameras=2, channels=3, seed=0, per_camera_colors=False, opacity=(0.2, 1.0),
                 slivers=False):
    """means [N, 3], quats [N, 4], scales [N, 3] (with `slivers`: some very thin), opacities [N],
    colors [N, D] or [C, N, D], viewmats [C, 4, 4], Ks [C, 3, 3], backgrounds [C, D], as numpy arrays."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-1.0, 1.0, (n, 3)).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    if slivers:
        scales = (rng.uniform(0.02, 0.3, (n, 3)) * rng.uniform(0.2, 1.0, (n, 1))).astype(np.float32)
    else:
        scales = rng.uniform(0.05, 0.3, (n, 3)).astype(np.float32)
    opacities = rng.uniform(*opacity, n).astype(np.float32)
    shape = (num_cameras, n, channels) if per_camera_colors else (n, channels)
    colors = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    viewmats = np.stack([np.asarray(look_at_viewmat([0.6 * c - 0.3, 0.2, -4.0], [0.0, 0.0, 0.0]))
                         for c in range(num_cameras)])
    Ks = np.stack([np.asarray(intrinsics_from_fov(45.0 + 5 * c, W, H)) for c in range(num_cameras)])
    backgrounds = rng.uniform(0.0, 1.0, (num_cameras, channels)).astype(np.float32)
    return means, quats, scales, opacities, colors, viewmats, Ks, backgrounds


def loss_and_grads(backend, scene, render_mode="RGB", capacity=4096, conventions="gsplat"):
    """Image, alpha and the gradients (in `NAMES` order) of a fixed random linear function of both."""
    means, quats, scales, opacities, colors, viewmats, Ks, backgrounds = scene
    rng = np.random.default_rng(7)
    out_channels = colors.shape[-1] + (render_mode == "RGB+ED")
    w_img = jnp.asarray(rng.normal(size=(viewmats.shape[0], H, W, out_channels)), jnp.float32)
    w_alpha = jnp.asarray(rng.normal(size=(viewmats.shape[0], H, W, 1)), jnp.float32)

    @jax.jit
    def loss(means, quats, scales, opacities, colors, backgrounds):
        img, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                         backgrounds=backgrounds, backend=backend, render_mode=render_mode,
                                         capacity=capacity, conventions=conventions)
        return jnp.sum(img * w_img) + jnp.sum(alpha * w_alpha), (img, alpha, meta["overflow"])

    grads, (img, alpha, overflow) = jax.grad(loss, argnums=tuple(range(6)), has_aux=True)(
        means, quats, scales, opacities, colors, backgrounds)
    assert not bool(overflow)
    return img, alpha, grads
