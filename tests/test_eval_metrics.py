"""Tests for ggtalker_jax.eval.metrics: known values, scikit-image agreement, known shifts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ggtalker_jax.eval import metrics


def _images(seed, shape=(2, 24, 20, 3)):
    rng = np.random.default_rng(seed)
    base = rng.random(shape).astype(np.float32)
    noisy = np.clip(base + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    return base, noisy


# ---------------------------------------------------------------- PSNR
def test_psnr_identical_is_inf():
    a, _ = _images(0)
    assert np.all(np.isinf(np.asarray(metrics.psnr(a, a))))


def test_psnr_known_mse():
    a = np.zeros((3, 8, 8, 3), np.float32)
    b = a + np.array([0.1, 0.01, 0.5], np.float32)[:, None, None, None]
    got = np.asarray(metrics.psnr(a, b))
    np.testing.assert_allclose(got, [20.0, 40.0, 10 * np.log10(4.0)], rtol=1e-5)
    # max_val = 255: MSE 25.5^2 -> 20 dB
    np.testing.assert_allclose(float(metrics.psnr(a[0] * 255, b[0] * 255, max_val=255.0)), 20.0, rtol=1e-5)


def test_psnr_mask_only_counts_masked_pixels():
    a = np.zeros((8, 8, 3), np.float32)
    b = a.copy()
    b[:4] = 0.1          # error only in top half
    b[4:] = 0.5
    mask = np.zeros((8, 8), np.float32)
    mask[:4] = 1.0
    np.testing.assert_allclose(float(metrics.psnr(a, b, mask=mask)), 20.0, rtol=1e-5)
    np.testing.assert_allclose(float(metrics.psnr(a, b, mask=mask[..., None])), 20.0, rtol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        metrics.psnr(a, b, mask=np.ones((4, 8)))


def test_psnr_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


# ---------------------------------------------------------------- SSIM
def test_ssim_identical_is_one():
    a, _ = _images(1)
    np.testing.assert_allclose(np.asarray(metrics.ssim(a, a)), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_skimage(seed):
    a, b = _images(seed)
    got = np.asarray(metrics.ssim(a, b))
    ref = [structural_similarity(a[i], b[i], channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0) for i in range(a.shape[0])]
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_ssim_matches_skimage_structured_image_max255():
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    a = np.stack([np.sin(xx / 3), np.cos(yy / 5), np.sin((xx + yy) / 7)], -1) * 100 + 120
    b = a + 15 * np.random.default_rng(3).standard_normal(a.shape)
    ref = structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=255.0)
    got = float(metrics.ssim(a.astype(np.float32), b.astype(np.float32), max_val=255.0))
    np.testing.assert_allclose(got, ref, atol=2e-5)


def test_ssim_too_small_image_is_clear():
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(np.zeros((8, 16, 3)), np.zeros((8, 16, 3)))


def test_dssim_loss_value_and_gradient():
    a, b = _images(2, shape=(1, 14, 13, 1))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = (1 - structural_similarity(a64[0], b64[0], channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=1.0)) / 2
    np.testing.assert_allclose(float(metrics.dssim_loss(a, b)), ref, atol=2e-5)
    assert float(metrics.dssim_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    with jax.enable_x64(True):
        grad = jax.grad(metrics.dssim_loss)(jnp.asarray(a64), jnp.asarray(b64))
        eps = 1e-6
        rng = np.random.default_rng(0)
        for _ in range(4):
            idx = tuple(rng.integers(0, s) for s in a.shape)
            up, dn = a64.copy(), a64.copy()
            up[idx] += eps
            dn[idx] -= eps
            fd = (float(metrics.dssim_loss(up, b64)) - float(metrics.dssim_loss(dn, b64))) / (2 * eps)
            np.testing.assert_allclose(float(grad[idx]), fd, rtol=1e-4, atol=1e-8)


# ---------------------------------------------------------------- landmarks
def test_mediapipe_lips_matches_mediapipe():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS
    assert metrics.MEDIAPIPE_LIPS == tuple(sorted({i for e in FACEMESH_LIPS for i in e}))


def test_lmd_known_shift():
    rng = np.random.default_rng(0)
    gt = rng.random((5, 478, 2)) * 100
    pred = gt.copy()
    idx = np.asarray(metrics.MEDIAPIPE_LIPS)
    pred[:, idx] += np.array([3.0, 4.0])        # every lip point moved by 5 px
    pred[:, 200] += 100.0                       # non-lip point: ignored by mouth LMD
    assert metrics.lmd(pred, gt) == pytest.approx(5.0)
    assert metrics.lmd(pred, gt, normalize_by=10.0) == pytest.approx(0.5)
    all_pts = metrics.lmd(pred, gt, indices=None)
    assert all_pts == pytest.approx((5.0 * len(idx) + 100 * np.sqrt(2)) / 478)


def test_lmd_bad_input_is_clear():
    with pytest.raises(ValueError, match="NaN"):
        metrics.lmd(np.full((2, 478, 2), np.nan), np.zeros((2, 478, 2)))
    with pytest.raises(ValueError, match=r"\[T, L, 2\|3\]"):
        metrics.lmd(np.zeros((478, 2)), np.zeros((478, 2)))


def _face_with_mouth(gaps, width=20.0):
    lm = np.zeros((len(gaps), 478, 3))
    lm[:, metrics.LEFT_INNER_CORNER, 0] = 50 - width / 2
    lm[:, metrics.RIGHT_INNER_CORNER, 0] = 50 + width / 2
    lm[:, metrics.UPPER_INNER_LIP, 1] = 60
    lm[:, metrics.LOWER_INNER_LIP, 1] = 60 + np.asarray(gaps)
    return lm


def test_mouth_opening_is_gap_over_width_and_scale_free():
    lm = _face_with_mouth([0.0, 5.0, 10.0])
    np.testing.assert_allclose(metrics.mouth_opening(lm), [0.0, 0.25, 0.5])
    np.testing.assert_allclose(metrics.mouth_opening(lm * 3.0), [0.0, 0.25, 0.5])


# ---------------------------------------------------------------- sync
def _speech_like(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    return np.convolve(x, np.ones(3) / 3, mode="same")


@pytest.mark.parametrize("k", [0, 3, -4, 7])
def test_sync_score_recovers_known_shift(k):
    n, pad = 200, 20
    energy_long = _speech_like(n + 2 * pad, seed=5)
    audio = energy_long[pad:pad + n]
    mouth = 0.3 * energy_long[pad - k:pad - k + n]    # mouth[t] = audio[t - k]: video lags by k
    res = metrics.sync_score(audio, mouth, max_offset=10)
    assert res.best_offset_frames == k
    assert res.confidence > 0.5
    assert res.correlations.shape == (21,)
    assert res.corr_at_0 == pytest.approx(res.correlations[10])
    if k == 0:
        assert res.corr_at_0 == pytest.approx(1.0, abs=1e-9)


def test_sync_score_unrelated_signals_low_confidence():
    res = metrics.sync_score(_speech_like(300, 1), _speech_like(300, 2), max_offset=10)
    assert res.confidence < 0.4


def test_sync_score_bad_input():
    with pytest.raises(ValueError, match="same length"):
        metrics.sync_score(np.zeros(50), np.zeros(40))
    with pytest.raises(ValueError, match="max_offset"):
        metrics.sync_score(np.zeros(20), np.zeros(20), max_offset=15)


def test_audio_energy_per_frame_known_rms():
    sr, fps = 1000, 10
    wav = np.concatenate([np.full(100, 0.5), np.zeros(100), np.full(100, -2.0)])
    np.testing.assert_allclose(metrics.audio_energy_per_frame(wav, sr, fps), [0.5, 0.0, 2.0])


# ---------------------------------------------------------------- AUE
def test_aue_known_value():
    gt = np.zeros((4, 53))
    pred = gt.copy()
    pred[:, 0] = 0.53
    assert metrics.aue(pred, gt) == pytest.approx(0.01)
    per = metrics.aue(pred, gt, per_dim=True)
    assert per.shape == (53,) and per[0] == pytest.approx(0.53) and per[1:].sum() == 0
    with pytest.raises(ValueError, match="same shape"):
        metrics.aue(np.zeros((4, 53)), np.zeros((4, 52)))


# ---------------------------------------------------------------- timing
def test_fps_breakdown_with_fake_clock():
    ticks = iter(np.arange(0.0, 10.0, 0.001))   # each clock() call advances 1 ms
    calls = {"a": 0, "b": 0}

    def stage(name):
        def run():
            calls[name] += 1
            return jnp.zeros(2)
        return run

    out = metrics.fps_breakdown({"a": stage("a"), "b": stage("b")}, warmup=2, iters=4,
                                clock=lambda: float(next(ticks)))
    assert calls == {"a": 6, "b": 6}
    # two clock reads per stage, 1 ms apart, over 4 iters -> 0.25 ms each
    assert out["a_ms"] == pytest.approx(0.25) and out["b_ms"] == pytest.approx(0.25)
    assert out["total_ms"] == pytest.approx(0.5) and out["fps"] == pytest.approx(2000.0)


# ---------------------------------------------------------------- real frames (MediaPipe)
def test_lmd_from_frames_on_real_video(shared_data):
    import cv2                                             # in-process decode (no ffmpeg fork)
    cap = cv2.VideoCapture(str(shared_data / "retalking_face1_6s.mp4"))
    frames = []
    while len(frames) < 6:
        ok, bgr = cap.read()
        assert ok, "could not decode retalking_face1_6s.mp4"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[::2, ::2])   # 350x350 keeps it quick
    cap.release()
    frames = np.stack(frames)
    lm = metrics.face_mesh_landmarks(frames)
    assert lm.shape == (6, 478, 3) and np.all(np.isfinite(lm))
    opening = metrics.mouth_opening(lm)
    assert np.all((opening >= 0) & (opening < 1.5))
    assert metrics.lmd_from_frames(frames, frames) == pytest.approx(0.0, abs=1e-9)
    shifted = np.roll(frames, 3, axis=2)                   # content moves 3 px right
    assert metrics.lmd_from_frames(shifted, frames) == pytest.approx(3.0, abs=0.5)
