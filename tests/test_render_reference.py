"""Spec tests of the projection + dense reference (backend="xla") against closed forms and finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.render import intrinsics_from_fov, look_at_viewmat, project_gaussians, quat_to_rotmat, rasterization

W, H = 40, 24


def _single_gaussian(scale, opacity, z=5.0, f=30.0, mean_xy=(0.0, 0.0)):
    means = np.array([[mean_xy[0], mean_xy[1], z]], np.float32)
    quats = np.array([[0.3, -0.5, 0.2, 0.9]], np.float32)  # any rotation: the Gaussian is isotropic
    scales = np.full((1, 3), scale, np.float32)
    opacities = np.array([opacity], np.float32)
    viewmats = np.eye(4, dtype=np.float32)[None]
    Ks = np.array([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]], np.float32)
    return means, quats, scales, opacities, viewmats, Ks


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_single_isotropic_gaussian_matches_closed_form(backend):
    scale, opacity, z, f = 1.0, 0.8, 5.0, 30.0
    means, quats, scales, opacities, viewmats, Ks = _single_gaussian(scale, opacity, z, f)
    color = np.array([[0.2, 0.5, 0.9]], np.float32)
    bg = np.array([[0.1, 0.0, 0.3]], np.float32)
    img, alpha, meta = rasterization(means, quats, scales, opacities, color, viewmats, Ks, W, H,
                                     backgrounds=bg, backend=backend)
    variance = (f * scale / z) ** 2 + 0.3  # EWA at the optical axis plus the eps2d dilation
    # gsplat's opacity-aware box: extend = min(3.33, sqrt(2 ln(255 opacity))) standard deviations per axis.
    radius = np.ceil(min(3.33, np.sqrt(2 * np.log(255 * opacity))) * np.sqrt(variance))
    assert (W / 2 - radius) < 16 and (H / 2 - radius) < 16 and W / 2 + radius > 32 and H / 2 + radius > 16  # all tiles
    cols, rows = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    a = opacity * np.exp(-0.5 * ((cols - W / 2) ** 2 + (rows - H / 2) ** 2) / variance)
    a = np.where(a >= 1 / 255, np.minimum(a, 0.999), 0.0)
    expected = a[..., None] * color[0] + (1 - a[..., None]) * bg[0]
    np.testing.assert_allclose(np.asarray(alpha[0, ..., 0]), a, atol=1e-5)
    np.testing.assert_allclose(np.asarray(img[0]), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(meta["means2d"][0, 0]), [W / 2, H / 2], atol=1e-5)
    np.testing.assert_allclose(np.asarray(meta["conics"][0, 0]), [1 / variance, 0, 1 / variance], rtol=1e-5, atol=1e-8)
    assert np.asarray(meta["radii"][0, 0]).tolist() == [int(radius), int(radius)]


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_alpha_cap_is_0999_with_zero_gradient_above_it(backend):
    """An opaque Gaussian hits gsplat's cap 0.999 at its centre (INRIA's is 0.99)."""
    z, f = 5.0, 30.0
    # Mean projected onto the centre (W/2 + 0.5, H/2 + 0.5) of pixel (H/2, W/2): raw alpha = opacity there.
    means, quats, scales, opacities, viewmats, Ks = _single_gaussian(1.0, 1.0, z, f, (0.5 * z / f, 0.5 * z / f))
    color = np.ones((1, 1), np.float32)

    def centre_alpha(opacity, conventions):
        _, alpha, _ = rasterization(means, quats, scales, opacity, color, viewmats, Ks, W, H, backend=backend,
                                    conventions=conventions, capacity=1024)
        return alpha[0, H // 2, W // 2, 0]

    opaque = jnp.asarray([1.0], jnp.float32)
    assert abs(float(centre_alpha(opaque, "gsplat")) - 0.999) < 1e-6
    assert abs(float(centre_alpha(opaque, "inria")) - 0.99) < 1e-6
    assert float(jax.grad(lambda o: centre_alpha(o, "gsplat"))(opaque)[0]) == 0.0
    np.testing.assert_allclose(float(jax.grad(lambda o: centre_alpha(o, "gsplat"))(jnp.asarray([0.5]))[0]), 1.0,
                               rtol=1e-5)


def test_projection_of_anisotropic_gaussian_matches_numpy():
    rng = np.random.default_rng(3)
    quats = rng.normal(size=(1, 4)).astype(np.float32)
    scales = np.array([[0.3, 0.1, 0.5]], np.float32)
    means = np.array([[0.4, -0.3, 4.0]], np.float32)
    viewmat = np.asarray(look_at_viewmat([1.0, 0.5, -3.0], [0.2, 0.0, 4.0]))
    K = np.asarray(intrinsics_from_fov(60.0, W, H))
    proj = project_gaussians(means, quats, scales, viewmat[None], K[None], W, H)
    rot = np.asarray(quat_to_rotmat(jnp.asarray(quats)))[0]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)
    cov3 = rot @ np.diag(scales[0] ** 2) @ rot.T
    p = viewmat[:3, :3] @ means[0] + viewmat[:3, 3]
    fx, fy = K[0, 0], K[1, 1]
    jac = np.array([[fx / p[2], 0, -fx * p[0] / p[2] ** 2], [0, fy / p[2], -fy * p[1] / p[2] ** 2]])
    cov2 = jac @ viewmat[:3, :3] @ cov3 @ viewmat[:3, :3].T @ jac.T + 0.3 * np.eye(2)
    inv = np.linalg.inv(cov2)
    np.testing.assert_allclose(np.asarray(proj.conics[0, 0]), [inv[0, 0], inv[0, 1], inv[1, 1]], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(proj.means2d[0, 0]), [fx * p[0] / p[2] + K[0, 2], fy * p[1] / p[2] + K[1, 2]],
                               rtol=1e-5)
    np.testing.assert_allclose(float(proj.depths[0, 0]), p[2], rtol=1e-6)


def _sequential_numpy(meta, opacities, colors):
    """Literal per-pixel front-to-back loop of gsplat's rules (independent of the vectorised reference)."""
    m2d, con, dep, rad = (np.asarray(meta[k][0], np.float64) for k in ("means2d", "conics", "depths", "radii"))
    order = [g for g in np.argsort(dep, kind="stable") if rad[g].min() > 0]
    img = np.zeros((H, W, colors.shape[1]))
    trans = np.ones((H, W))
    for i in range(H):
        for j in range(W):
            t = 1.0
            for g in order:
                rx, ry = rad[g]
                tx0, tx1 = max(np.floor(m2d[g, 0] / 16 - rx / 16), 0), min(np.ceil(m2d[g, 0] / 16 + rx / 16), 3)
                ty0, ty1 = max(np.floor(m2d[g, 1] / 16 - ry / 16), 0), min(np.ceil(m2d[g, 1] / 16 + ry / 16), 2)
                if not (tx0 <= j // 16 < tx1 and ty0 <= i // 16 < ty1):
                    continue
                dx, dy = m2d[g, 0] - (j + 0.5), m2d[g, 1] - (i + 0.5)
                sigma = 0.5 * (con[g, 0] * dx * dx + con[g, 2] * dy * dy) + con[g, 1] * dx * dy
                alpha = min(0.999, opacities[g] * np.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if t * (1 - alpha) <= 1e-4:
                    break
                img[i, j] += alpha * t * colors[g]
                t *= 1 - alpha
            trans[i, j] = t
    return img, trans


def test_reference_matches_literal_sequential_loop_with_early_stop():
    """Stacked near-opaque Gaussians trigger the T <= 1e-4 stop; compare with a literal loop."""
    rng = np.random.default_rng(1)
    n = 12
    means = np.c_[rng.uniform(-0.5, 0.5, (n, 2)), rng.uniform(3, 6, n)].astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    scales = rng.uniform(0.3, 1.0, (n, 3)).astype(np.float32)
    opacities = rng.uniform(0.9, 1.0, n).astype(np.float32)
    colors = rng.uniform(0, 1, (n, 2)).astype(np.float32)
    _, _, _, _, viewmats, Ks = _single_gaussian(1.0, 1.0)
    img, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="xla")
    expected_img, expected_t = _sequential_numpy(meta, opacities, colors)
    assert (expected_t < 1e-3).sum() > 20  # the stop rule is exercised
    np.testing.assert_allclose(np.asarray(img[0]), expected_img, atol=2e-5)
    np.testing.assert_allclose(np.asarray(1 - alpha[0, ..., 0]), expected_t, atol=2e-5)


def test_gradients_match_central_finite_differences_float64():
    rng = np.random.default_rng(0)
    n = 6
    with jax.enable_x64(True):
        means = jnp.asarray(np.c_[rng.uniform(-1, 1, (n, 2)), rng.uniform(3, 5, n)])
        quats = jnp.asarray(rng.normal(size=(n, 4)))
        scales = jnp.asarray(rng.uniform(0.2, 0.5, (n, 3)))
        opacities = jnp.asarray(rng.uniform(0.3, 0.8, n))
        colors = jnp.asarray(rng.uniform(0, 1, (n, 3)))
        bgs = jnp.asarray(rng.uniform(0, 1, (1, 3)))
        viewmats = jnp.eye(4)[None]
        Ks = jnp.asarray(np.array([[[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]]]))
        weights = jnp.asarray(rng.normal(size=(1, H, W, 3)))

        def loss(params):
            img, alpha, _ = rasterization(*params[:5], viewmats, Ks, W, H, backgrounds=params[5], backend="xla")
            return jnp.sum(img * weights) + jnp.sum(alpha)

        params = (means, quats, scales, opacities, colors, bgs)
        grads = jax.grad(loss)(params)
        eps = 1e-6
        for i, (p, g) in enumerate(zip(params, grads)):
            direction = jnp.asarray(rng.normal(size=p.shape))
            plus = tuple(q + eps * direction if k == i else q for k, q in enumerate(params))
            minus = tuple(q - eps * direction if k == i else q for k, q in enumerate(params))
            fd = (loss(plus) - loss(minus)) / (2 * eps)
            analytic = jnp.sum(g * direction)
            np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-5, atol=1e-6, err_msg=f"input {i}")


def test_bad_inputs_raise_clear_errors():
    means, quats, scales, opacities, viewmats, Ks = _single_gaussian(0.5, 0.5)
    colors = np.ones((1, 3), np.float32)
    with pytest.raises(ValueError, match="quats must be"):
        rasterization(means, quats[:, :3], scales, opacities, colors, viewmats, Ks, W, H, backend="xla")
    with pytest.raises(ValueError, match="means contains NaN"):
        rasterization(means * np.nan, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="xla")
    with pytest.raises(ValueError, match="backend must be"):
        rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend="cuda")
    with pytest.raises(ValueError, match="conventions must be one of"):
        rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, conventions="3dgs")
