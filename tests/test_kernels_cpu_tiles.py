"""backend="cpu" (XLA:CPU tile compositor + packed binning) held to the dense reference backend="xla"."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.kernels import cpu_tiles
from ggtalker_jax.kernels.binning import bin_gaussians, tile_rects
from ggtalker_jax.kernels.conventions import ALPHA_THRESHOLD as ALPHA_MIN
from ggtalker_jax.kernels.packed_binning import bin_gaussians_packed
from ggtalker_jax.render import project_gaussians, rasterization
from raster_scenes import H, NAMES, W, random_scene
from raster_scenes import loss_and_grads as _loss_and_grads



def _scene(n=60, num_cameras=2, channels=3, seed=0, per_camera_colors=False, opacity=(0.2, 1.0)):
    return random_scene(n, num_cameras, channels, seed, per_camera_colors, opacity, slivers=True)


def _assert_grads_close(grads, expected, rtol=2e-5):
    for name, g, e in zip(NAMES, grads, expected):
        scale = float(jnp.abs(e).max())
        assert scale > 0, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=rtol * max(scale, 1.0), err_msg=name)


def _with_degenerate_gaussians(scene):
    """Append Gaussians behind the cameras of `_scene`, of zero scale, off-screen, fully transparent,
    close to the near plane, and a sliver."""
    means, quats, scales, opacities, colors, viewmats, Ks, backgrounds = scene
    extra_means = np.array([[0, 0, -9.0], [0.1, 0.1, 0.0], [80.0, 0, 0.0], [0.2, 0, 0.0], [0, 0, -3.995],
                            [0.3, 0.1, 0.5]], np.float32)
    extra_scales = np.array([[0.5] * 3, [0.0] * 3, [0.5] * 3, [0.5] * 3, [0.5] * 3, [0.4, 1e-6, 0.2]], np.float32)
    extra_colors = np.ones(colors.shape[:-2] + (6, colors.shape[-1]), np.float32)
    return (np.concatenate([means, extra_means]), np.concatenate([quats, np.tile([[1.0, 0, 0, 0]], (6, 1))]).astype(
        np.float32), np.concatenate([scales, extra_scales]),
            np.concatenate([opacities, np.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.7], np.float32)]),
            np.concatenate([colors, extra_colors], axis=-2), viewmats, Ks, backgrounds)


@pytest.mark.parametrize("channels,per_camera_colors,render_mode", [(3, False, "RGB"), (7, True, "RGB+ED")])
def test_cpu_matches_xla_values_and_all_gradients(channels, per_camera_colors, render_mode):
    """Two cameras, D = 3 and D = 7 (+ expected depth), with degenerate Gaussians mixed in."""
    scene = _with_degenerate_gaussians(_scene(channels=channels, per_camera_colors=per_camera_colors))
    img_x, alpha_x, grads_x = _loss_and_grads("xla", scene, render_mode)
    img_c, alpha_c, grads_c = _loss_and_grads("cpu", scene, render_mode)
    assert img_c.shape == (2, H, W, channels + (render_mode == "RGB+ED"))
    assert float(alpha_x.max()) > 0.5  # something is drawn
    for g in grads_c:
        assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(np.asarray(img_c), np.asarray(img_x), atol=2e-5)
    np.testing.assert_allclose(np.asarray(alpha_c), np.asarray(alpha_x), atol=1e-5)
    _assert_grads_close(grads_c, grads_x)
    assert np.all(np.asarray(grads_c[0])[[-6, -4]] == 0)  # behind the cameras, off-screen


def test_auto_backend_is_cpu_here_and_renders_the_same():
    scene = _scene(num_cameras=1)
    means, quats, scales, opacities, colors, viewmats, Ks, backgrounds = scene
    img_a, alpha_a, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="auto")
    img_c, alpha_c, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="cpu")
    assert jax.default_backend() == "cpu"
    np.testing.assert_array_equal(np.asarray(img_a), np.asarray(img_c))
    np.testing.assert_array_equal(np.asarray(alpha_a), np.asarray(alpha_c))


def test_early_termination_over_many_chunks_and_rounds():
    """80 near-opaque Gaussians stacked on every pixel: pixels stop after a few, long lists span many
    chunks (K = 32) and rounds; the saturated sub-tiles must leave the work list, results stay equal."""
    rng = np.random.default_rng(3)
    n = 80
    means = np.c_[rng.uniform(-0.2, 0.2, (n, 2)), rng.uniform(3.0, 6.0, n)].astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    scales = rng.uniform(1.5, 3.0, (n, 3)).astype(np.float32)  # each covers the whole image
    opacities = rng.uniform(0.6, 1.0, n).astype(np.float32)
    opacities[::7] = 1.0  # clamped at ALPHA_MAX: zero gradient there
    colors = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    viewmats = np.eye(4, dtype=np.float32)[None]
    Ks = np.array([[[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]]], np.float32)
    backgrounds = rng.uniform(0, 1, (1, 3)).astype(np.float32)
    scene = (means, quats, scales, opacities, colors, viewmats, Ks, backgrounds)
    img_x, alpha_x, grads_x = _loss_and_grads("xla", scene)
    img_c, alpha_c, grads_c = _loss_and_grads("cpu", scene)
    assert float(alpha_x.min()) > 0.99  # every pixel (nearly) saturates
    np.testing.assert_allclose(np.asarray(img_c), np.asarray(img_x), atol=2e-5)
    np.testing.assert_allclose(np.asarray(alpha_c), np.asarray(alpha_x), atol=1e-5)
    _assert_grads_close(grads_c, grads_x)
    # The compositor really skipped the chunks behind the saturated front.
    grid = cpu_tiles.CpuTileGrid(16, 3, 2, sub_tiles=2)

    @jax.jit
    def chunks_and_rounds(means, opacities, colors):
        proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
        binning = bin_gaussians_packed(proj.means2d, proj.depths, proj.radii, 16, 3, 2, 1024)
        geom = jnp.concatenate([proj.means2d[0], proj.conics[0], opacities[:, None]], axis=1)
        boxes = cpu_tiles.support_boxes(proj.means2d[0], proj.conics[0], opacities)
        ids, starts, ends = cpu_tiles.sub_tile_lists(grid, binning.flat_ids, binning.tile_starts, binning.tile_ends,
                                                     boxes)
        _, _, _, rounds = cpu_tiles._forward_flat(grid, geom, colors, ids, starts, ends,
                                                  cpu_tiles.sub_tile_origins(grid, 1))
        return -(-(ends - starts) // grid.chunk), rounds

    chunks, rounds = chunks_and_rounds(means, opacities, colors)
    assert int(jnp.max(chunks)) >= 3 and int(jnp.sum(rounds)) < int(jnp.sum(chunks))


def test_vmapped_batch_under_jit_and_grad_matches_per_frame_reference():
    """As `render_frames` renders: vmap over frames (one camera each) inside jit, gradients through it."""
    means, quats, scales, opacities, colors, viewmats, Ks, _ = _scene(n=50, num_cameras=1, channels=4)
    shifts = jnp.asarray(np.random.default_rng(5).normal(scale=0.1, size=(2, 3)), jnp.float32)
    weights = jnp.asarray(np.random.default_rng(6).normal(size=(2, H, W, 4)), jnp.float32)

    def render(backend, means, opacities, colors, shift):
        img, alpha, _ = rasterization(means + shift, quats, scales, opacities, colors, viewmats, Ks, W, H,
                                      backend=backend, capacity=2048)
        return img[0], alpha[0]

    def batched_loss(means, opacities, colors):
        img, alpha = jax.vmap(lambda s: render("cpu", means, opacities, colors, s))(shifts)
        return jnp.sum(img * weights) + jnp.sum(alpha), (img, alpha)

    def looped_loss(means, opacities, colors):
        total, imgs = 0.0, []
        for b in range(shifts.shape[0]):
            img, alpha = render("xla", means, opacities, colors, shifts[b])
            total = total + jnp.sum(img * weights[b]) + jnp.sum(alpha)
            imgs.append(img)
        return total, jnp.stack(imgs)

    args = tuple(jnp.asarray(x) for x in (means, opacities, colors))
    grads_c, (img_c, _) = jax.jit(jax.grad(batched_loss, argnums=(0, 1, 2), has_aux=True))(*args)
    grads_x, img_x = jax.jit(jax.grad(looped_loss, argnums=(0, 1, 2), has_aux=True))(*args)
    assert not np.allclose(np.asarray(img_x[0]), np.asarray(img_x[1]))  # the frames differ
    np.testing.assert_allclose(np.asarray(img_c), np.asarray(img_x), atol=2e-5)
    for name, g, e in zip(("means", "opacities", "colors"), grads_c, grads_x):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=2e-5 * max(float(jnp.abs(e).max()), 1.0),
                                   err_msg=name)
    # Deterministic: the same call twice gives bit-identical gradients.
    again, _ = jax.jit(jax.grad(batched_loss, argnums=(0, 1, 2), has_aux=True))(*args)
    for g, h in zip(grads_c, again):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(h))


@functools.partial(jax.jit, static_argnums=(6,))
def _grads_of_composite(means2d, conics, opacities, colors, depths, radii, grid):
    def loss(means2d, conics, opacities, colors):
        img, t, _, _ = cpu_tiles.rasterize_to_pixels_cpu(means2d, conics, opacities, colors, depths, radii, W, H,
                                                         16, 4096, grid=grid)
        return jnp.sum(img * jnp.arange(3.0)) + jnp.sum(t * t), (img, t)
    return jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(means2d, conics, opacities, colors)


@pytest.mark.parametrize("sub_tiles,chunk,tiles_per_block", [(1, 32, 16), (4, 8, 5), (2, 5, 2)])
def test_sub_tiling_and_block_shape_do_not_change_the_result(sub_tiles, chunk, tiles_per_block):
    means, quats, scales, opacities, colors, viewmats, Ks, _ = _scene(n=80, num_cameras=2)
    proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
    opac = jnp.broadcast_to(jnp.asarray(opacities), (2, 80))
    cols = jnp.broadcast_to(jnp.asarray(colors), (2, 80, 3))
    grid = cpu_tiles.CpuTileGrid(16, 3, 2, sub_tiles=sub_tiles, chunk=chunk, tiles_per_block=tiles_per_block)
    base = cpu_tiles.CpuTileGrid(16, 3, 2, sub_tiles=1, chunk=64, tiles_per_block=1)
    args = (proj.means2d, proj.conics, opac, cols, proj.depths, proj.radii)
    grads, (img, t) = _grads_of_composite(*args, grid)
    grads_b, (img_b, t_b) = _grads_of_composite(*args, base)
    np.testing.assert_allclose(np.asarray(img), np.asarray(img_b), atol=1e-6)
    np.testing.assert_allclose(np.asarray(t), np.asarray(t_b), atol=1e-6)
    for g, e in zip(grads, grads_b):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-5 * max(float(jnp.abs(e).max()), 1.0))


def test_sub_tile_lists_keep_every_visible_pair_in_depth_order():
    """Brute force: every (pixel, Gaussian) pair of a tile list with alpha >= ALPHA_MIN is in the list of
    the pixel's sub-tile, and each sub-tile list is the tile list filtered (same order)."""
    means, quats, scales, opacities, _, viewmats, Ks, _ = _scene(n=120, num_cameras=1, opacity=(0.01, 1.0))
    grid = cpu_tiles.CpuTileGrid(16, 3, 2, sub_tiles=4)

    @jax.jit
    def lists(means, opacities):
        proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
        binning = bin_gaussians(proj.means2d, proj.depths, proj.radii, 16, 3, 2, 2048)
        boxes = cpu_tiles.support_boxes(proj.means2d[0], proj.conics[0], opacities)
        return proj, binning, cpu_tiles.sub_tile_lists(grid, binning.flat_ids, binning.tile_starts,
                                                       binning.tile_ends, boxes)

    proj, binning, (ids, starts, ends) = jax.tree.map(np.asarray, lists(means, opacities))
    origins = np.asarray(cpu_tiles.sub_tile_origins(grid, 1))
    m2d, con = proj.means2d[0].astype(np.float64), proj.conics[0].astype(np.float64)
    kept = dropped = 0
    for tile in range(6):
        tile_list = binning.flat_ids[binning.tile_starts[tile]:binning.tile_ends[tile]]
        for q in range(16):
            sub = tile * 16 + q
            sub_list = ids[starts[sub]:ends[sub]]
            in_sub = np.isin(tile_list, sub_list)
            np.testing.assert_array_equal(tile_list[in_sub], sub_list)  # a filtered, ordered copy
            x0, y0 = origins[sub]
            py, px = (np.mgrid[y0:y0 + 4, x0:x0 + 4] + 0.5).reshape(2, 1, 16)
            dx, dy = m2d[tile_list, 0, None] - px, m2d[tile_list, 1, None] - py  # [L, 16]
            a, b, c = (con[tile_list, i, None] for i in range(3))
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            visible = np.any((sigma >= 0) & (opacities[tile_list, None] * np.exp(-sigma) >= ALPHA_MIN), axis=1)
            assert np.all(in_sub[visible]), (tile, q)
            kept += int(in_sub.sum())
            dropped += int((~in_sub).sum())
    assert kept > 50 and dropped > kept  # the split really prunes


@pytest.mark.parametrize("sub_tiles", [2, 4])
def test_fused_sub_tile_binning_equals_binning_then_split(sub_tiles):
    means, quats, scales, opacities, _, viewmats, Ks, _ = _scene(n=150, num_cameras=2, opacity=(0.01, 1.0))
    grid = cpu_tiles.CpuTileGrid(16, 3, 2, sub_tiles=sub_tiles)

    @jax.jit
    def both(means, opacities):
        proj = project_gaussians(means, quats, scales, viewmats, Ks, W, H)
        opac = jnp.broadcast_to(opacities, (2, 150)).reshape(-1)
        boxes = cpu_tiles.support_boxes(proj.means2d.reshape(-1, 2), proj.conics.reshape(-1, 3), opac)
        binning = bin_gaussians(proj.means2d, proj.depths, proj.radii, 16, 3, 2, 4096)
        split = cpu_tiles.sub_tile_lists(grid, binning.flat_ids, binning.tile_starts, binning.tile_ends, boxes)
        return split, cpu_tiles.bin_sub_tiles(grid, proj.means2d, proj.depths, proj.radii, boxes, 4096)

    (ids_a, starts_a, ends_a), (ids_b, starts_b, ends_b, n_isect, overflow) = both(means, opacities)
    assert int(n_isect) > 100 and not bool(overflow)
    np.testing.assert_array_equal(np.asarray(starts_a), np.asarray(starts_b))
    np.testing.assert_array_equal(np.asarray(ends_a), np.asarray(ends_b))
    used = np.zeros(ids_a.shape, bool)
    for s, e in zip(np.asarray(starts_a), np.asarray(ends_a)):
        used[s:e] = True
    np.testing.assert_array_equal(np.asarray(ids_a)[used], np.asarray(ids_b)[used])


@pytest.mark.parametrize("num_cameras,n", [(1, 200), (3, 64)])
def test_packed_binning_equals_bin_gaussians(num_cameras, n):
    rng = np.random.default_rng(num_cameras)
    tw, th = 5, 4
    means2d = jnp.asarray(rng.uniform(-10, 90, (num_cameras, n, 2)), jnp.float32)
    depths = jnp.asarray(rng.integers(1, 6, (num_cameras, n)).astype(np.float32))  # many exact ties
    radii = rng.integers(0, 20, (num_cameras, n, 2))  # per-axis radii, incl. culled (0 on either axis)
    radii = jnp.asarray(np.where(radii.min(-1, keepdims=True) == 0, 0, radii), jnp.int32)
    counts = np.asarray(jnp.sum((lambda r: (r[2] - r[0]) * (r[3] - r[1]))(tile_rects(means2d, radii, 16, tw, th))))
    for capacity in (4096, int(counts) // 2):
        a = jax.jit(bin_gaussians, static_argnums=(3, 4, 5, 6))(means2d, depths, radii, 16, tw, th, capacity)
        b = jax.jit(bin_gaussians_packed, static_argnums=(3, 4, 5, 6))(means2d, depths, radii, 16, tw, th, capacity)
        assert int(a.n_intersections) == int(b.n_intersections) == int(counts)
        assert bool(a.overflow) == bool(b.overflow) == (counts > capacity)
        if not bool(a.overflow):
            np.testing.assert_array_equal(np.asarray(a.flat_ids), np.asarray(b.flat_ids))
            np.testing.assert_array_equal(np.asarray(a.tile_starts), np.asarray(b.tile_starts))
            np.testing.assert_array_equal(np.asarray(a.tile_ends), np.asarray(b.tile_ends))
        else:  # every tile range holds distinct Gaussians in depth order, capacity slots in all
            assert int(b.tile_ends[-1]) == capacity
            d = np.asarray(depths).reshape(-1)
            for s, e in zip(np.asarray(b.tile_starts), np.asarray(b.tile_ends)):
                ids = np.asarray(b.flat_ids[s:e])
                assert len(set(ids.tolist())) == len(ids) and np.all(np.diff(d[ids]) >= 0)


def test_gradients_match_central_finite_differences_float64():
    """The compositor on its own, in float64, small chunks so that rounds and block padding are exercised."""
    rng = np.random.default_rng(0)
    n = 9
    with jax.enable_x64(True):
        grid = cpu_tiles.CpuTileGrid(8, 2, 2, sub_tiles=2, chunk=2, tiles_per_block=3)
        means2d = jnp.asarray(rng.uniform(2, 14, (1, n, 2)))
        cov = rng.normal(size=(n, 2, 2))
        cov = np.einsum("nij,nkj->nik", cov, cov) * 4 + 2 * np.eye(2)
        inv = np.linalg.inv(cov)
        conics = jnp.asarray(np.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)[None])
        opacities = jnp.asarray(rng.uniform(0.3, 0.9, (1, n)))
        colors = jnp.asarray(rng.uniform(0, 1, (1, n, 3)))
        depths = jnp.asarray(rng.uniform(1, 2, (1, n)))
        radii = jnp.full((1, n, 2), 9, jnp.int32)
        weights = jnp.asarray(rng.normal(size=(1, 16, 16, 3)))
        t_weights = jnp.asarray(rng.normal(size=(1, 16, 16)))

        @jax.jit
        def loss(params):
            img, t, _, _ = cpu_tiles.rasterize_to_pixels_cpu(*params, depths, radii, 16, 16, 8, 256, grid=grid)
            assert img.dtype == jnp.float64
            return jnp.sum(img * weights) + jnp.sum(t * t_weights)

        params = (means2d, conics, opacities, colors)
        grads = jax.jit(jax.grad(loss))(params)
        eps = 1e-6
        for i, (p, g) in enumerate(zip(params, grads)):
            direction = jnp.asarray(rng.normal(size=p.shape))
            plus = tuple(q + eps * direction if k == i else q for k, q in enumerate(params))
            minus = tuple(q - eps * direction if k == i else q for k, q in enumerate(params))
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            analytic = jnp.sum(g * direction)
            assert abs(float(analytic)) > 1e-3
            np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6, atol=1e-8, err_msg=f"input {i}")
