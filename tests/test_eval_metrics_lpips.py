"""Tests for ggtalker_jax.eval.lpips with random / reduced-width weights (no download)."""
import jax
import numpy as np
import pytest

from ggtalker_jax.eval import lpips as lp

SMALL_ALEX = lp.LPIPSConfig("alex", (4, 6, 5, 4, 3))
SMALL_VGG = lp.LPIPSConfig("vgg", (3, 3, 4, 4, 5, 5, 5, 6, 6, 6, 4, 4, 4))


def _pair(seed, shape=(2, 32, 32, 3)):
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)


@pytest.mark.parametrize("config", [SMALL_ALEX, SMALL_VGG], ids=["alex", "vgg"])
def test_lpips_zero_for_identical_symmetric_positive(config):
    params = lp.init_lpips_params(jax.random.PRNGKey(0), config, image_size=32)
    a, b = _pair(1)
    d_ab = np.asarray(lp.lpips(a, b, params))
    d_ba = np.asarray(lp.lpips(b, a, params))
    assert d_ab.shape == (2,)
    np.testing.assert_allclose(np.asarray(lp.lpips(a, a, params)), 0.0, atol=1e-7)
    np.testing.assert_allclose(d_ab, d_ba, rtol=1e-5)
    assert np.all(d_ab > 0)
    # a small perturbation is closer than an unrelated image
    near = np.clip(a + 0.02, 0, 1)
    assert np.all(np.asarray(lp.lpips(a, near, params)) < d_ab)


def test_full_size_alex_params_have_official_shapes():
    params = jax.eval_shape(lambda key: lp.init_lpips_params(key, lp.ALEX, image_size=32),
                            jax.random.PRNGKey(0))
    assert params["features_0"]["kernel"].shape == (11, 11, 3, 64)
    assert params["features_3"]["kernel"].shape == (5, 5, 64, 192)
    assert [params[f"lin_{k}"]["kernel"].shape[2] for k in range(5)] == [64, 192, 384, 256, 256]
    assert lp.config_from_params(params) == lp.ALEX


# ------------------------------------------------------------------ NumPy reference (torch layout)
def _np_conv(x, w, b, stride, pad):
    """x [H, W, I], torch weight w [O, I, kh, kw] -> [H', W', O] (cross-correlation like torch)."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    o, _, kh, kw = w.shape
    ho = (x.shape[0] - kh) // stride + 1
    wo = (x.shape[1] - kw) // stride + 1
    out = np.zeros((ho, wo, o))
    for r in range(ho):
        for c in range(wo):
            patch = x[r * stride:r * stride + kh, c * stride:c * stride + kw]   # [kh, kw, I]
            out[r, c] = np.einsum("hwi,oihw->o", patch, w) + b
    return out


def _np_maxpool(x, k, s):
    ho, wo = (x.shape[0] - k) // s + 1, (x.shape[1] - k) // s + 1
    return np.array([[x[r * s:r * s + k, c * s:c * s + k].max(axis=(0, 1)) for c in range(wo)]
                     for r in range(ho)])


def _np_lpips_alex(a, b, arrays):
    def feats(img):
        x = (img * 2 - 1 - lp._SHIFT) / lp._SCALE
        out = []
        specs = [(0, 4, 2), (3, 1, 2), (6, 1, 1), (8, 1, 1), (10, 1, 1)]
        for pos, (i, s, p) in enumerate(specs):
            if pos in (1, 2):
                x = _np_maxpool(x, 3, 2)
            x = np.maximum(_np_conv(x, arrays[f"features.{i}.weight"], arrays[f"features.{i}.bias"], s, p), 0)
            out.append(x)
        return out
    total = 0.0
    for k, (fa, fb) in enumerate(zip(feats(a), feats(b))):
        fa = fa / (np.sqrt((fa ** 2).sum(-1, keepdims=True)) + 1e-10)
        fb = fb / (np.sqrt((fb ** 2).sum(-1, keepdims=True)) + 1e-10)
        total += np.mean((fa - fb) ** 2 @ arrays[f"lin{k}.model.1.weight"][0, :, 0, 0])
    return total


def _fake_alex_npz(path, widths=SMALL_ALEX.conv_widths, seed=0):
    rng = np.random.default_rng(seed)
    kernels = (11, 5, 3, 3, 3)
    arrays, in_ch = {}, 3
    for i, w, k in zip((0, 3, 6, 8, 10), widths, kernels):
        arrays[f"features.{i}.weight"] = rng.normal(0, 0.3, (w, in_ch, k, k)).astype(np.float32)
        arrays[f"features.{i}.bias"] = rng.normal(0, 0.1, (w,)).astype(np.float32)
        in_ch = w
    for k, w in enumerate(widths):
        arrays[f"lin{k}.model.1.weight"] = rng.random((1, w, 1, 1)).astype(np.float32)
    np.savez(path, **arrays)
    return arrays


def test_load_fake_npz_matches_numpy_reference(tmp_path):
    path = tmp_path / "lpips_tiny_alex.npz"
    arrays = _fake_alex_npz(path)
    params = lp.load_lpips_params(path)
    assert lp.config_from_params(params) == SMALL_ALEX
    a, b = _pair(3, shape=(1, 35, 33, 3))
    got = float(lp.lpips(a, b, params)[0])
    ref = _np_lpips_alex(a[0].astype(np.float64), b[0].astype(np.float64), arrays)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        lp.load_lpips_params(tmp_path / "missing.npz")
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        lp.load_lpips_params(bad)
    arrays = _fake_alex_npz(tmp_path / "ok.npz")
    no_head = {k: v for k, v in arrays.items() if k != "lin2.model.1.weight"}
    np.savez(tmp_path / "nohead.npz", **no_head)
    with pytest.raises(ValueError, match="lin2"):
        lp.load_lpips_params(tmp_path / "nohead.npz")
    wrong = dict(arrays)
    wrong["features.3.weight"] = wrong["features.3.weight"][:, :2]
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(ValueError, match="features.3"):
        lp.load_lpips_params(tmp_path / "wrong.npz")


def test_maybe_lpips_without_weights_reports_not_computed():
    a, b = _pair(0)
    assert lp.maybe_lpips(a, b, None) == lp.LPIPS_NOT_COMPUTED == "not computed (no weights)"


def test_lpips_rejects_bad_images():
    params = lp.init_lpips_params(jax.random.PRNGKey(0), SMALL_ALEX, image_size=32)
    with pytest.raises(ValueError, match="at least 32x32"):
        lp.lpips(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)), params)
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W, 3\]"):
        lp.lpips(np.zeros((32, 32, 1)), np.zeros((32, 32, 1)), params)
