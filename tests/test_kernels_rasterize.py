"""Pallas kernels (interpreted on CPU) held to the dense jnp reference: values and every gradient."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.kernels.binning import bin_gaussians
from ggtalker_jax.render import look_at_viewmat, intrinsics_from_fov, rasterization

W, H = 40, 24  # 3 x 2 tiles of 16, the last column and row partial


def _scene(n=40, num_cameras=2, channels=3, seed=0, per_camera_colors=False):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-1.0, 1.0, (n, 3)).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    scales = rng.uniform(0.05, 0.3, (n, 3)).astype(np.float32)
    opacities = rng.uniform(0.2, 1.0, n).astype(np.float32)
    shape = (num_cameras, n, channels) if per_camera_colors else (n, channels)
    colors = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    viewmats = np.stack([np.asarray(look_at_viewmat([0.6 * c - 0.3, 0.2, -4.0], [0.0, 0.0, 0.0]))
                         for c in range(num_cameras)])
    Ks = np.stack([np.asarray(intrinsics_from_fov(45.0 + 5 * c, W, H)) for c in range(num_cameras)])
    backgrounds = rng.uniform(0.0, 1.0, (num_cameras, channels)).astype(np.float32)
    return means, quats, scales, opacities, colors, viewmats, Ks, backgrounds


def _loss_and_grads(backend, scene, render_mode="RGB", capacity=4096):
    means, quats, scales, opacities, colors, viewmats, Ks, backgrounds = scene
    rng = np.random.default_rng(7)
    out_channels = colors.shape[-1] + (render_mode == "RGB+ED")
    w_img = jnp.asarray(rng.normal(size=(viewmats.shape[0], H, W, out_channels)), jnp.float32)
    w_alpha = jnp.asarray(rng.normal(size=(viewmats.shape[0], H, W, 1)), jnp.float32)

    @jax.jit
    def loss(means, quats, scales, opacities, colors, backgrounds):
        img, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                         backgrounds=backgrounds, backend=backend, render_mode=render_mode,
                                         capacity=capacity)
        return jnp.sum(img * w_img) + jnp.sum(alpha * w_alpha), (img, alpha, meta["overflow"])

    grads, (img, alpha, overflow) = jax.grad(loss, argnums=tuple(range(6)), has_aux=True)(
        means, quats, scales, opacities, colors, backgrounds)
    assert not bool(overflow)
    return img, alpha, grads


@pytest.mark.parametrize(
    "channels,per_camera_colors,render_mode",
    [(3, False, "RGB"), (5, True, "RGB+ED")],
)
def test_pallas_matches_xla_values_and_all_gradients(channels, per_camera_colors, render_mode):
    scene = _scene(channels=channels, per_camera_colors=per_camera_colors)
    img_x, alpha_x, grads_x = _loss_and_grads("xla", scene, render_mode)
    img_p, alpha_p, grads_p = _loss_and_grads("pallas", scene, render_mode)
    assert img_p.shape == (2, H, W, channels + (render_mode == "RGB+ED"))
    assert float(alpha_x.max()) > 0.5  # something is drawn
    np.testing.assert_allclose(np.asarray(img_p), np.asarray(img_x), atol=2e-5)
    np.testing.assert_allclose(np.asarray(alpha_p), np.asarray(alpha_x), atol=1e-5)
    names = ("means", "quats", "scales", "opacities", "colors", "backgrounds")
    for name, gx, gp in zip(names, grads_x, grads_p):
        scale = float(jnp.abs(gx).max())
        assert scale > 0, name
        np.testing.assert_allclose(np.asarray(gp), np.asarray(gx), atol=2e-5 * max(scale, 1.0), err_msg=name)


def test_degenerate_gaussians_are_finite_and_invisible():
    """Behind the camera, zero scale, off-screen, fully transparent: no pixels, finite gradients."""
    _, _, _, _, _, viewmats, Ks, _ = _scene(num_cameras=1)
    viewmats = np.eye(4, dtype=np.float32)[None]
    means = np.array([[0, 0, -3.0], [0, 0, 4.0], [50.0, 0, 4.0], [0.1, 0, 4.0], [0, 0, 0.005]], np.float32)
    quats = np.tile(np.array([[1, 0, 0, 0]], np.float32), (5, 1))
    scales = np.array([[0.5] * 3, [0.0] * 3, [0.5] * 3, [0.5] * 3, [0.5] * 3], np.float32)
    opacities = np.array([1.0, 1.0, 1.0, 0.0, 1.0], np.float32)
    colors = np.ones((5, 3), np.float32)

    def loss(means, scales, opacities):
        img, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                         backend="pallas", capacity=256)
        return jnp.sum(img) + jnp.sum(alpha), (img, meta)

    grads, (img, meta) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(means, scales, opacities)
    radii = np.asarray(meta["radii"][0])
    assert radii[0] == 0 and radii[2] == 0 and radii[4] == 0  # behind, off-screen, in front of near plane
    assert radii[1] > 0 and radii[3] > 0  # a point (eps2d dilation) and a transparent one still bin
    assert np.all(np.isfinite(np.asarray(img)))
    # The zero-scale Gaussian is a 0.3-px^2 blob: visible only near the centre pixel; the rest is empty.
    img = np.asarray(img[0])
    assert img[:, :W // 2 - 2].max() == 0.0 and img[:, W // 2 + 2:].max() == 0.0
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0])[[0, 2, 4]] == 0)
    # Huge scale: one Gaussian covering every tile with tiny alpha everywhere -> finite and below opacity.
    img_big, alpha_big, _ = rasterization(means[1:2], quats[:1], np.full((1, 3), 1e3, np.float32),
                                          np.array([0.5], np.float32), colors[:1], viewmats, Ks, W, H)
    assert np.all(np.isfinite(np.asarray(img_big))) and float(alpha_big.max()) <= 0.5


def test_overflow_reported_inside_jit_and_auto_sized_outside():
    scene = _scene(num_cameras=1)
    means, quats, scales, opacities, colors, viewmats, Ks, _ = scene
    ample, ample_alpha, ample_meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                                   capacity=4096)
    n_isect = int(ample_meta["n_intersections"])
    assert n_isect > 16 and not bool(ample_meta["overflow"])

    jitted = jax.jit(lambda m: rasterization(m, quats, scales, opacities, colors, viewmats, Ks, W, H, capacity=16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img_small, _, meta_small = jitted(means)
        jax.effects_barrier()
    assert bool(meta_small["overflow"]) and int(meta_small["n_intersections"]) == n_isect
    assert any("exceed capacity" in str(w.message) for w in caught)
    assert float(jnp.abs(img_small - ample).max()) > 1e-3  # work really was dropped

    img_auto, alpha_auto, meta_auto = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                                    capacity=16)
    assert meta_auto["capacity"] >= n_isect and not bool(meta_auto["overflow"])
    np.testing.assert_allclose(np.asarray(img_auto), np.asarray(ample), atol=1e-6)
    np.testing.assert_allclose(np.asarray(alpha_auto), np.asarray(ample_alpha), atol=1e-6)


def test_binning_lists_every_tile_of_every_gaussian_in_depth_order():
    means2d = jnp.array([[[8.0, 8.0], [30.0, 20.0], [20.0, 10.0]]])
    radii = jnp.array([[4, 9, 0]], jnp.int32)
    depths = jnp.array([[2.0, 1.0, 0.5]])
    b = bin_gaussians(means2d, depths, radii, 16, 3, 2, capacity=8)
    assert int(b.n_intersections) == 1 + 4 and not bool(b.overflow)
    ranges = {t: np.asarray(b.flat_ids[int(s):int(e)]).tolist()
              for t, (s, e) in enumerate(zip(b.tile_starts, b.tile_ends))}
    # Gaussian 1 at (30, 20) r 9 -> x tiles 1..2, y tiles 0..1; Gaussian 0 -> tile 0 only; 2 is culled.
    assert ranges == {0: [0], 1: [1], 2: [1], 3: [], 4: [1], 5: [1]}
    assert np.asarray(b.flat_ids[5:]).tolist() == [3, 3, 3]  # unused slots carry the sentinel C * N
