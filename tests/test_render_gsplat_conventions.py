"""gsplat 1.5's conventions, held against an independent per-pixel reference written from gsplat's semantics.

The reference below is written from gsplat's documented rules (`ProjectionEWA3DGSFused.cu`, `Utils.cuh`
`persp_proj`, `RasterizeToPixels3DGSFwd.cu`), in float64, with a literal front-to-back loop per pixel over
*all* visible Gaussians (no tiles: gsplat's per-axis, opacity-aware box only accelerates). It shares no code
with `ggtalker_jax.render` or `ggtalker_jax.kernels`. The camera has an off-centre principal point, and some
Gaussians sit beyond the Jacobian clamp limits, which gsplat computes from (cx, cy).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.kernels.conventions import GSPLAT, INRIA
from ggtalker_jax.render import project_gaussians, rasterization, rasterize_to_pixels_reference

W, H = 40, 24
K_OFF_CENTRE = np.array([[30.0, 0.0, 8.0], [0.0, 28.0, 19.0], [0.0, 0.0, 1.0]])


def _scene(seed=0, n=14):
    rng = np.random.default_rng(seed)
    xy = np.c_[rng.uniform(-0.2, 1.0, n), rng.uniform(-0.6, 0.15, n)]  # x/z, y/z inside the image
    xy[:3] = [[-0.62, 0.1], [0.2, -0.9], [1.4, 0.05]]  # beyond the clamp limits of x/z or y/z at z ~ 1..2
    z = rng.uniform(1.2, 4.0, n)
    z[:3] = [1.0, 1.1, 1.0]
    means = np.c_[xy * z[:, None], z]
    quats = rng.normal(size=(n, 4))
    scales = rng.uniform(0.05, 0.35, (n, 3))
    scales[:3] = 0.45  # big enough to stay on screen from beyond the limits
    opacities = rng.uniform(0.3, 0.97, n)
    opacities[5] = 0.003  # below 1/255: culled by gsplat
    colors = rng.uniform(0.0, 1.0, (n, 3))
    backgrounds = rng.uniform(0.0, 1.0, (1, 3))
    return means, quats, scales, opacities, colors, backgrounds


def _rotmat(xp, q):
    q = q / xp.sqrt(xp.sum(q * q, axis=-1, keepdims=True))
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return xp.stack([
        xp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        xp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        xp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def _gsplat_projection(xp, means, quats, scales, K, eps2d=0.3):
    """gsplat's persp_proj + add_blur + inverse for an identity view matrix: means2d, conics, cov2d, z."""
    rot = _rotmat(xp, quats)
    m = rot * scales[:, None, :]
    cov = m @ xp.swapaxes(m, -1, -2)
    x, y, z = means[:, 0], means[:, 1], means[:, 2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * W / fx, 0.5 * H / fy
    lim_x_pos, lim_x_neg = (W - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (H - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * xp.minimum(lim_x_pos, xp.maximum(-lim_x_neg, x / z))
    ty = z * xp.minimum(lim_y_pos, xp.maximum(-lim_y_neg, y / z))
    zero = 0.0 * z
    jac = xp.stack([xp.stack([fx / z, zero, -fx * tx / z**2], -1), xp.stack([zero, fy / z, -fy * ty / z**2], -1)], -2)
    cov2d = jac @ cov @ xp.swapaxes(jac, -1, -2)
    a, b, c = cov2d[:, 0, 0] + eps2d, cov2d[:, 0, 1], cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    conics = xp.stack([c / det, -b / det, a / det], -1)
    means2d = xp.stack([fx * x / z + cx, fy * y / z + cy], -1)
    clamped = (x / z > lim_x_pos) | (x / z < -lim_x_neg) | (y / z > lim_y_pos) | (y / z < -lim_y_neg)
    return means2d, conics, xp.stack([a, c], -1), det, clamped


def _gsplat_radii(means2d, diag, det, opacities, z, near=0.01, far=1e10):
    """gsplat's culling and per-axis opacity-aware box (numpy): radii [N, 2] int, 0 = culled."""
    extend = np.minimum(3.33, np.sqrt(2.0 * np.log(np.maximum(opacities, 1 / 255) * 255.0)))
    r = np.ceil(extend[:, None] * np.sqrt(diag))
    keep = (z >= near) & (z <= far) & (det > 0) & (opacities >= 1 / 255)
    keep &= ~((means2d[:, 0] + r[:, 0] <= 0) | (means2d[:, 0] - r[:, 0] >= W)
              | (means2d[:, 1] + r[:, 1] <= 0) | (means2d[:, 1] - r[:, 1] >= H))
    return np.where(keep[:, None], r, 0).astype(np.int64)


def _composite(xp, means2d, conics, opacities, colors, background, order):
    """Literal front-to-back loop over `order` for every pixel (vectorised over pixels): image, alpha."""
    cols, rows = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    px, py = cols.reshape(-1), rows.reshape(-1)
    t = xp.ones(px.shape)
    img = xp.zeros(px.shape + (colors.shape[1],))
    done = xp.zeros(px.shape, bool)
    for g in order:
        dx, dy = means2d[g, 0] - px, means2d[g, 1] - py
        sigma = 0.5 * (conics[g, 0] * dx * dx + conics[g, 2] * dy * dy) + conics[g, 1] * dx * dy
        raw = opacities[g] * xp.exp(-sigma)
        alpha = xp.where(raw > 0.999, 0.999, raw)  # min(0.999, .), zero gradient through the cap
        ok = (sigma >= 0) & (alpha >= 1 / 255) & ~done
        next_t = t * (1 - alpha)
        stop = ok & (next_t <= 1e-4)
        blend = ok & ~stop
        img = img + xp.where(blend[:, None], (alpha * t)[:, None] * colors[g][None, :], 0.0)
        t = xp.where(blend, next_t, t)
        done = done | stop
    img = img + t[:, None] * background[None, :]
    return img.reshape(H, W, -1), (1 - t).reshape(H, W, 1)


def _decisions(means, quats, scales, opacities):
    """The discrete part (numpy): radii [N, 2] and the depth order of the visible Gaussians."""
    means2d, _, diag, det, _ = _gsplat_projection(np, means, quats, scales, K_OFF_CENTRE)
    radii = _gsplat_radii(means2d, diag, det, opacities, means[:, 2])
    visible = np.where(radii.min(axis=1) > 0)[0]
    return radii, visible[np.argsort(means[visible, 2], kind="stable")]


def _reference(params, order, xp=np):
    """The whole render by the independent reference: image [H, W, 3], alpha [H, W, 1]; xp=jnp differentiates."""
    means, quats, scales, opacities, colors, backgrounds = params
    means2d, conics, _, _, _ = _gsplat_projection(xp, means, quats, scales, K_OFF_CENTRE)
    return _composite(xp, means2d, conics, opacities, colors, backgrounds[0], order)


def _render(backend, params, **kwargs):
    means, quats, scales, opacities, colors, backgrounds = (jnp.asarray(p, jnp.float32) for p in params)
    img, alpha, meta = rasterization(means, quats, scales, opacities, colors, jnp.eye(4)[None],
                                     jnp.asarray(K_OFF_CENTRE, jnp.float32)[None], W, H, backgrounds=backgrounds,
                                     backend=backend, capacity=1024, **kwargs)
    return img[0], alpha[0], meta


def test_projection_matches_gsplat_with_off_centre_principal_point():
    means, quats, scales, opacities, _, _ = _scene()
    means2d, conics, diag, det, clamped = _gsplat_projection(np, means, quats, scales, K_OFF_CENTRE)
    radii = _gsplat_radii(means2d, diag, det, opacities, means[:, 2])
    assert clamped[:3].all() and (radii[:3] > 0).all()  # clamped Gaussians that still show
    assert (radii[5] == 0).all() and (radii > 0).all(axis=1).sum() >= 10
    proj = project_gaussians(*(jnp.asarray(v, jnp.float32) for v in (means, quats, scales)), jnp.eye(4)[None],
                             jnp.asarray(K_OFF_CENTRE, jnp.float32)[None], W, H,
                             opacities=jnp.asarray(opacities, jnp.float32))
    assert proj.radii.shape == (1, len(means), 2)
    np.testing.assert_array_equal(np.asarray(proj.radii[0]), radii)
    shown = radii.min(axis=1) > 0
    np.testing.assert_allclose(np.asarray(proj.means2d[0])[shown], means2d[shown], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(proj.conics[0])[shown], conics[shown], rtol=1e-4, atol=1e-7)
    # The INRIA rule set (clamp about the image centre) projects the clamped Gaussians differently.
    inria = project_gaussians(*(jnp.asarray(v, jnp.float32) for v in (means, quats, scales)), jnp.eye(4)[None],
                              jnp.asarray(K_OFF_CENTRE, jnp.float32)[None], W, H, conventions=INRIA)
    assert np.abs(np.asarray(inria.conics[0])[:3] - conics[:3]).max() > 1e-3


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_image_matches_gsplat_per_pixel_reference(backend):
    params = _scene()
    radii, order = _decisions(*params[:4])
    ref_img, ref_alpha = _reference(params, order)
    assert ref_alpha.max() > 0.9 and (ref_alpha > 0.1).mean() > 0.3  # a real image
    img, alpha, meta = _render(backend, params)
    np.testing.assert_array_equal(np.asarray(meta["radii"][0]), radii)
    np.testing.assert_allclose(np.asarray(img), ref_img, atol=2e-5)
    np.testing.assert_allclose(np.asarray(alpha), ref_alpha, atol=2e-5)


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_gradients_match_gsplat_per_pixel_reference(backend):
    params = _scene(seed=1)
    rng = np.random.default_rng(5)
    w_img, w_alpha = rng.normal(size=(H, W, 3)), rng.normal(size=(H, W, 1))

    _, order = _decisions(*params[:4])

    def ref_loss(*p):
        img, alpha = _reference(p, order, xp=jnp)
        return jnp.sum(img * w_img) + jnp.sum(alpha * w_alpha)

    def loss(*p):
        img, alpha, _ = _render(backend, p)
        return jnp.sum(img * w_img.astype(np.float32)) + jnp.sum(alpha * w_alpha.astype(np.float32))

    with jax.enable_x64(True):
        ref_grads = jax.grad(ref_loss, argnums=tuple(range(6)))(*(jnp.asarray(p) for p in params))
        ref_grads = [np.asarray(g) for g in ref_grads]
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(*(jnp.asarray(p, jnp.float32) for p in params))
    names = ("means", "quats", "scales", "opacities", "colors", "backgrounds")
    for name, g, ref in zip(names, grads, ref_grads):
        scale = np.abs(ref).max()
        assert scale > 0, name
        np.testing.assert_allclose(np.asarray(g), ref, atol=2e-4 * scale, err_msg=name)


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_tiled_image_equals_untiled_render_of_the_same_projection(backend):
    """gsplat's box covers every pixel with alpha >= 1/255, so tiles change nothing (to float32 rounding)."""
    width, height = 96, 64  # 6 x 4 tiles
    K = jnp.asarray([[[80.0, 0.0, 30.0], [0.0, 80.0, 40.0], [0.0, 0.0, 1.0]]], jnp.float32)
    rng = np.random.default_rng(0)
    n = 40
    z = rng.uniform(2.5, 4.0, n)
    means = np.c_[rng.uniform(-30 / 80, 66 / 80, n) * z, rng.uniform(-40 / 80, 24 / 80, n) * z, z].astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    scales = rng.uniform(0.1, 0.4, (n, 3)).astype(np.float32)  # 3 to 13 px standard deviations
    opacities = rng.uniform(0.7, 1.0, n).astype(np.float32)  # alpha >= 1/255 out to ~3.3 sigma
    colors = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)

    for conventions in (GSPLAT, INRIA):
        img, alpha, _ = rasterization(means, quats, scales, opacities, colors, jnp.eye(4)[None], K, width, height,
                                      backend=backend, capacity=1024, conventions=conventions.name)
        proj = project_gaussians(jnp.asarray(means), jnp.asarray(quats), jnp.asarray(scales), jnp.eye(4)[None], K,
                                 width, height, opacities=jnp.asarray(opacities), conventions=conventions)
        untiled, t = rasterize_to_pixels_reference(proj.means2d, proj.conics, jnp.asarray(opacities)[None],
                                                   jnp.asarray(colors)[None], proj.depths, proj.radii, width, height,
                                                   tile_size=None, conventions=conventions)
        diff = max(float(jnp.abs(img - untiled).max()), float(jnp.abs(alpha[..., 0] - (1 - t)).max()))
        if conventions is GSPLAT:
            assert diff < 1e-5, diff
        else:  # INRIA's 3-sigma square box misses pixels in uncovered tiles: the image depends on the tiling
            assert diff > 1e-3, diff
