"""Pallas kernels (interpreted on CPU) held to the dense jnp reference: values and every gradient."""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.kernels.binning import bin_gaussians, depth_sort_key, round_capacity
from ggtalker_jax.kernels.common import KernelTuning, TileGrid, resolve_interpret
from ggtalker_jax.kernels.rasterize import pack_geometry
from ggtalker_jax.kernels.rasterize_bwd import rasterize_tiles_bwd
from ggtalker_jax.kernels.rasterize_fwd import rasterize_tiles_fwd
from ggtalker_jax.render import (check_overflow, default_capacity, intrinsics_from_fov, look_at_viewmat,
                                 project_gaussians, rasterization)

from raster_scenes import H, W
from raster_scenes import loss_and_grads as _loss_and_grads
from raster_scenes import random_scene as _scene

_bin = jax.jit(bin_gaussians, static_argnums=(3, 4, 5, 6))



@pytest.mark.parametrize(
    "channels,per_camera_colors,render_mode,conventions",
    [(3, False, "RGB", "gsplat"), (5, True, "RGB+ED", "gsplat"), (3, False, "RGB", "inria")],
)
def test_pallas_matches_xla_values_and_all_gradients(channels, per_camera_colors, render_mode, conventions):
    scene = _scene(channels=channels, per_camera_colors=per_camera_colors)
    img_x, alpha_x, grads_x = _loss_and_grads("xla", scene, render_mode, conventions=conventions)
    img_p, alpha_p, grads_p = _loss_and_grads("pallas", scene, render_mode, conventions=conventions)
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
    assert meta["radii"].shape == (1, 5, 2)
    # Behind, off-screen, in front of the near plane, and (gsplat: opacity < 1/255) transparent: culled.
    assert np.all(radii[[0, 2, 3, 4]] == 0)
    assert np.all(radii[1] > 0)  # a point still bins (eps2d dilation)
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


def _crowded_scene(n=160, size=64):
    """Large Gaussians over a 64 x 64 image (16 tiles): more than 1024 intersections."""
    rng = np.random.default_rng(3)
    means = np.c_[rng.uniform(-0.8, 0.8, (n, 2)), rng.uniform(-0.5, 0.5, n)].astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    scales = rng.uniform(0.15, 0.3, (n, 3)).astype(np.float32)
    opacities = rng.uniform(0.3, 0.9, n).astype(np.float32)
    colors = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)
    viewmats = np.asarray(look_at_viewmat([0.0, 0.0, -4.0], [0.0, 0.0, 0.0]))[None]
    Ks = np.asarray(intrinsics_from_fov(45.0, size, size))[None]
    return means, quats, scales, opacities, colors, viewmats, Ks


def test_overflow_reported_inside_jit_and_resized_outside():
    size = 64
    means, quats, scales, opacities, colors, viewmats, Ks = _crowded_scene(size=size)
    # Outside jit: the default capacity (8 per Gaussian -> 1024) is too small; it is resized and re-rendered.
    auto, auto_alpha, auto_meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, size, size)
    n_isect = int(auto_meta["n_intersections"])
    assert n_isect > 1024 and not bool(auto_meta["overflow"])
    assert auto_meta["capacity"] >= n_isect and auto_meta["capacity"] % 1024 == 0
    ample, ample_alpha, ample_meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, size, size,
                                                   capacity=auto_meta["capacity"] - 5)
    assert ample_meta["capacity"] == auto_meta["capacity"]  # rounded up to a multiple of 1024
    np.testing.assert_allclose(np.asarray(auto), np.asarray(ample), atol=1e-6)
    np.testing.assert_allclose(np.asarray(auto_alpha), np.asarray(ample_alpha), atol=1e-6)

    # Inside jit: the static capacity is kept, the overflow is flagged, warned about and checkable.
    jitted = jax.jit(lambda m: rasterization(m, quats, scales, opacities, colors, viewmats, Ks, size, size,
                                             capacity=1024))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img_small, _, meta_small = jitted(means)
        jax.effects_barrier()
    assert bool(meta_small["overflow"]) and int(meta_small["n_intersections"]) == n_isect
    assert any("exceed capacity" in str(w.message) for w in caught)
    assert float(jnp.abs(img_small - ample).max()) > 1e-3  # work really was dropped
    with pytest.raises(RuntimeError, match="exceed capacity"):
        check_overflow(dict(meta_small, capacity=1024))
    check_overflow(ample_meta)  # no overflow: no error

    quiet = jax.jit(lambda m: rasterization(m, quats, scales, opacities, colors, viewmats, Ks, size, size,
                                            capacity=1024, warn_on_overflow=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, meta_quiet = quiet(means)
        jax.effects_barrier()
    assert bool(meta_quiet["overflow"]) and not any("exceed capacity" in str(w.message) for w in caught)


def test_binning_lists_every_tile_of_every_gaussian_in_depth_order():
    means2d = jnp.array([[[8.0, 8.0], [30.0, 20.0], [20.0, 10.0], [40.0, 8.0]]])
    radii = jnp.array([[[4, 4], [9, 9], [0, 0], [2, 7]]], jnp.int32)  # per axis (x, y)
    depths = jnp.array([[2.0, 1.0, 0.5, 3.0]])
    b = _bin(means2d, depths, radii, 16, 3, 2, 10)
    assert int(b.n_intersections) == 1 + 4 + 1 and not bool(b.overflow)
    ranges = {t: np.asarray(b.flat_ids[int(s):int(e)]).tolist()
              for t, (s, e) in enumerate(zip(b.tile_starts, b.tile_ends))}
    # Gaussian 1 at (30, 20) r 9 -> x tiles 1..2, y tiles 0..1; Gaussian 0 -> tile 0 only; 2 is culled;
    # Gaussian 3 at (40, 8) r (2, 7) -> x tile 2 only, y tiles 0..0 (8 - 7 >= 0, 8 + 7 < 16).
    assert ranges == {0: [0], 1: [1], 2: [1, 3], 3: [], 4: [1], 5: [1]}
    assert np.asarray(b.flat_ids[6:]).tolist() == [4] * 4  # unused slots carry the sentinel C * N


def test_binning_overflow_drops_the_farthest_gaussians_and_orders_cameras_apart():
    # Two cameras, one tile each camera (16 x 16 image); depths differ per camera.
    means2d = jnp.full((2, 3, 2), 8.0)
    radii = jnp.full((2, 3, 2), 4, jnp.int32)
    depths = jnp.array([[3.0, 1.0, 2.0], [0.5, 2.5, -1.0]])  # negative depths still sort correctly
    b = _bin(means2d, depths, radii, 16, 1, 1, 6)
    lists = [np.asarray(b.flat_ids[int(s):int(e)]).tolist() for s, e in zip(b.tile_starts, b.tile_ends)]
    assert lists == [[1, 2, 0], [5, 3, 4]]  # flat id = camera * N + gaussian, near to far per camera
    small = _bin(means2d, depths, radii, 16, 1, 1, 4)
    assert bool(small.overflow) and int(small.n_intersections) == 6
    kept = [np.asarray(small.flat_ids[int(s):int(e)]).tolist() for s, e in zip(small.tile_starts, small.tile_ends)]
    # Depth order over both cameras: -1 (5), 0.5 (3), 1 (1), 2 (2) fit; 2.5 (4) and 3 (0) are dropped.
    assert kept == [[1, 2], [5, 3]]


def test_depth_sort_key_preserves_float_order():
    values = np.array([-np.inf, -3.5, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.2, 1.0, 7.5, 1e30, np.inf], np.float32)
    keys = np.asarray(depth_sort_key(jnp.asarray(values)))
    assert np.all(np.diff(keys[values != 0.0].astype(np.int64)) > 0)
    assert keys[4] <= keys[5]  # -0 and +0


def test_round_capacity_and_default_capacity():
    assert [round_capacity(n) for n in (0, 1, 1024, 1025, 1_700_000)] == [1024, 1024, 1024, 2048, 1_700_864]
    assert default_capacity(2, 100) == 2048  # 8 * 2 * 100 = 1600 -> 2048


def test_interpret_resolution_and_bad_arguments():
    assert resolve_interpret(None) == (jax.default_backend() != "gpu")
    assert resolve_interpret(True) is True and resolve_interpret(False) is False
    means, quats, scales, opacities, colors, viewmats, Ks, _ = _scene(n=4, num_cameras=1)
    with pytest.raises(ValueError, match="interpret must be"):
        rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, interpret="yes")
    with pytest.raises(ValueError, match="capacity must be"):
        rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, capacity=0)
    with pytest.raises(ValueError, match="power of two"):
        KernelTuning(backward_batch=3)


@pytest.mark.parametrize("channels,k_batch", [(3, 2), (5, 4)])
def test_triton_code_paths_match_interpreter_paths(channels, k_batch):
    """The Triton code paths (forward: prefetching loads; backward: stacked reductions, masked vector
    stores), run in the interpreter, give the same results as the interpreter's own paths."""
    scene = _scene(n=24, num_cameras=2, channels=channels)
    means, quats, scales, opacities, colors, viewmats, Ks, _ = scene
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H, opacities=opacities)
    b = _bin(proj.means2d, proj.depths, proj.radii, 16, 3, 2, 1024)
    geom = pack_geometry(proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3), jnp.tile(opacities, 2))
    cols = jnp.tile(jnp.asarray(colors), (2, 1))
    rng = np.random.default_rng(0)
    grid = TileGrid(2, 16, 3, 2, tuning=KernelTuning(backward_batch=k_batch))
    fwd_args = (b.tile_starts, b.tile_ends, b.flat_ids, geom, cols)
    colors_out, t_final, last = rasterize_tiles_fwd(grid, *fwd_args)
    triton_fwd = rasterize_tiles_fwd(dataclasses.replace(grid, triton_paths=True), *fwd_args)  # prefetching loads
    for got, want in zip(triton_fwd, (colors_out, t_final, last)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    g_colors = jnp.asarray(rng.normal(size=(12, channels, 256)), jnp.float32)
    g_t = jnp.asarray(rng.normal(size=(12, 256)), jnp.float32)
    args = (b.tile_starts, b.tile_ends, b.flat_ids, geom, cols, t_final, last, g_colors, g_t)
    scalar = rasterize_tiles_bwd(dataclasses.replace(grid, triton_paths=False), *args)
    vector = rasterize_tiles_bwd(dataclasses.replace(grid, triton_paths=True), *args)
    used = np.asarray(b.flat_ids) < 48
    scale = np.abs(np.asarray(scalar)[:, used]).max()
    assert used.sum() > 40 and scale > 1e-3
    # Same sums in another order: equal to float32 rounding.
    np.testing.assert_allclose(np.asarray(vector)[:, used], np.asarray(scalar)[:, used], rtol=1e-5, atol=1e-6 * scale)
