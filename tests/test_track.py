"""Default subject (deterministic, learnable audio-mouth relation) and head tracking that recovers it."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax import head
from ggtalker_jax.audio import synth
from ggtalker_jax.data import default_subject
from ggtalker_jax.data.dataset import PreparedDataset
from ggtalker_jax.data.track import track_dataset, track_landmarks


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    out = tmp_path_factory.mktemp("subject")
    default_subject.make_default_subject(str(out), seconds=2.4, size=96, seed=3, uv_resolution=32, write_video=False)
    return out


def test_synth_speech_is_deterministic_and_loudness_follows_the_mouth():
    a, syl_a = synth.synth_speech(3.0, seed=5)
    b, _ = synth.synth_speech(3.0, seed=5)
    c, _ = synth.synth_speech(3.0, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    frames = 75
    energy = np.sqrt(np.mean(a[: frames * 640].reshape(frames, 640) ** 2, 1))
    opening = synth.mouth_targets(syl_a, frames, 25.0)["open"]
    assert np.corrcoef(energy, opening)[0, 1] > 0.5


def test_default_subject_is_a_valid_prepared_dataset(subject):
    data = PreparedDataset(subject)
    assert data.num_frames == 60 and data.size == 96
    frame = data.frame(10)
    assert frame.shape == (96, 96, 3) and frame.std() > 10          # an image, not a blank
    mask = data.mask(10)
    assert 0.05 < mask[..., 0].mean() < 0.6                          # the head covers part of the frame
    track = data.tracking()
    jaw = track["jaw_pose"][:, 0]
    meta = json.loads((subject / "meta.json").read_text())
    assert meta["split"]["train"][1] == meta["split"]["test"][0]
    wav, sr = data.audio()
    energy = np.sqrt(np.mean(wav[: 60 * sr // 25].reshape(60, -1) ** 2, 1))
    assert np.corrcoef(energy, jaw)[0, 1] > 0.5                      # a real audio -> mouth relation


def test_default_subject_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        default_subject.make_default_subject(str(d), seconds=1.0, size=64, seed=7, uv_resolution=16, write_video=False)
    for name in ("landmarks.npy", "audio_features.npy"):
        np.testing.assert_array_equal(np.load(a / name), np.load(b / name))
    assert (a / "frames" / "000005.jpg").read_bytes() == (b / "frames" / "000005.jpg").read_bytes()


def test_tracking_recovers_pose_and_jaw(subject):
    model = head.load("open")
    gt = np.load(subject / "tracking.npz")
    landmarks = np.load(subject / "landmarks.npy")
    rng = np.random.default_rng(0)
    noisy = landmarks + rng.normal(0, 0.25, landmarks.shape).astype(np.float32)
    found = np.ones(len(noisy), bool)
    found[20:24] = False                                             # lost frames, bridged by smoothness
    noisy[20:24] = np.nan
    r = track_landmarks(model, noisy, found, 96)
    R1 = np.asarray(head.rodrigues(jnp.asarray(r["global_rot"])))
    R2 = np.asarray(head.rodrigues(jnp.asarray(gt["global_rot"])))
    angle = np.degrees(np.arccos(np.clip((np.einsum("tij,tij->t", R1, R2) - 1) / 2, -1, 1)))
    assert angle.mean() < 4.0 and angle.max() < 8.0
    # Depth and focal length trade off (weak perspective); their ratio and the lateral position do not.
    scale_fit = r["K"][0, 0] / -r["translation"][:, 2]
    scale_gt = gt["K"][0, 0] / -gt["translation"][:, 2]
    np.testing.assert_allclose(scale_fit, scale_gt, rtol=0.06)
    lateral = np.abs(r["translation"][:, :2] / -r["translation"][:, 2:] - gt["translation"][:, :2] / -gt["translation"][:, 2:])
    assert lateral.max() < 0.01
    assert np.corrcoef(r["jaw_pose"][:, 0], gt["jaw_pose"][:, 0])[0, 1] > 0.85
    assert np.all(np.isfinite(r["landmark_error_px"])) and np.median(r["landmark_error_px"]) < 1.5


def test_track_dataset_writes_tracking_and_stats(subject, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(subject, copy)
    (copy / "tracking.npz").unlink()
    track_dataset(str(copy))
    data = PreparedDataset(copy)
    t = data.tracking()
    assert t["expression"].shape == (60, 50) and t["K"].shape == (3, 3)
    assert json.loads((copy / "meta.json").read_text())["tracking"]["landmark_error_px_median"] < 1.5


def test_tracking_refuses_clips_without_faces():
    model = head.load("open")
    with pytest.raises(ValueError, match="no frame has a face"):
        track_landmarks(model, np.full((5, 478, 3), np.nan, np.float32), np.zeros(5, bool), 64)
