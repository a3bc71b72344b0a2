"""End-to-end `prepare` on real clips (first seconds, small crops) and its bad-input errors."""
import json

import numpy as np
import pytest

from ggtalker_jax import media
from ggtalker_jax.data import dataset as ds
from ggtalker_jax import media
from ggtalker_jax.data import ingest
from ggtalker_jax.errors import MediaError


def _check_prepared(out, size, frames):
    data = ds.PreparedDataset(out)
    assert data.num_frames == frames and data.size == size
    assert data.frame(0).shape == (size, size, 3) and data.mask(frames - 1).shape == (size, size, 2)
    lm = data.landmarks[:, :, :2]
    assert lm.min() > 0 and lm.max() < size  # whole face inside every crop
    assert data.landmarks_found.all()
    head = np.stack([data.mask(i)[..., 0] for i in (0, frames // 2)])
    assert 0.1 < head.mean() < 0.6  # the head fills a good part of the crop
    # face mesh centre near the crop centre
    np.testing.assert_allclose(lm.mean(axis=(0, 1)), [size / 2, size / 2], atol=0.12 * size)
    wav, sr = data.audio()
    assert wav.size == int(round(frames / 25 * sr))
    assert data.audio_features.shape == (frames, 320)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split"]["train"][1] + (meta["split"]["test"][1] - meta["split"]["test"][0]) == frames
    return data


@pytest.mark.parametrize("name", ["german_anchor_20s.mp4", "latentsync_fullbody_10s.mp4"])
def test_prepare_real_clip(shared_data, tmp_path, name):
    calls = []
    out = tmp_path / "ds"
    summary = ingest.prepare(shared_data / name, out, size=128, max_seconds=1.2, progress=False,
                             track_fn=calls.append)
    assert summary["frames"] == 30 and summary["found_ratio"] == 1.0
    assert calls == [out.with_name(out.name + ".partial")]  # tracking runs before the dataset appears
    data = _check_prepared(out, 128, 30)
    boxes = data.crop_boxes
    info = media.probe_video(shared_data / name)
    if name.startswith("latentsync"):
        # small face in a tall 1080x1920 frame: the crop is much smaller than the frame, in its upper half
        assert (boxes[:, 2] < 0.6 * info.width).all()
        assert (boxes[:, 1] + boxes[:, 2] / 2 < 0.6 * info.height).all()
    assert np.abs(np.diff(boxes[:, :2], axis=0)).max() <= 0.05 * boxes[0, 2]  # smooth, no jumps


def _synthetic_video(path, seconds=1.2, audio="sine", size=64):
    rng = np.random.default_rng(0)
    n = int(seconds * 25)
    frames = (rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n))
    sr = 16000
    wav = {"sine": 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * sr)) / sr),
           "silent": np.zeros(int(seconds * sr))}.get(audio)
    media.write_mp4(path, frames, fps=25, audio=None if wav is None else (wav, sr), preset="ultrafast")
    return path


def test_prepare_bad_inputs(tmp_path):
    with pytest.raises(MediaError, match="no face found.*noise.mp4|noise.mp4.*no face found"):
        ingest.prepare(_synthetic_video(tmp_path / "noise.mp4"), tmp_path / "o1", size=32, progress=False)
    with pytest.raises(MediaError, match="mute.mp4: has no audio track"):
        ingest.prepare(_synthetic_video(tmp_path / "mute.mp4", audio=None), tmp_path / "o2", progress=False)
    with pytest.raises(MediaError, match="quiet.mp4: audio is silent"):
        ingest.prepare(_synthetic_video(tmp_path / "quiet.mp4", audio="silent"), tmp_path / "o3", progress=False)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        ingest.prepare(tmp_path / "empty.mp4", tmp_path / "o4", progress=False)
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(10000))
    with pytest.raises(MediaError, match="corrupt.mp4"):
        ingest.prepare(tmp_path / "corrupt.mp4", tmp_path / "o5", progress=False)
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())  # nothing half-written


def test_prepare_short_clip_and_lost_frames(shared_data, tmp_path):
    with pytest.raises(MediaError, match="only 15 frames"):
        ingest.prepare(shared_data / "german_anchor_20s.mp4", tmp_path / "short", size=32, max_seconds=0.6,
                       progress=False)
    # blank out frames 10..13 and 30..59 of a real clip: the short gap is interpolated, the long one is an error
    frames = list(media.read_video(shared_data / "german_anchor_20s.mp4", max_seconds=1.6))
    for i in range(10, 14):
        frames[i] = np.zeros_like(frames[i])
    wav, sr = media.extract_audio(shared_data / "german_anchor_20s.mp4")
    gap = tmp_path / "gap.mp4"
    media.write_mp4(gap, [f[::4, ::4] for f in frames], audio=(wav[: int(1.6 * sr)], sr), preset="ultrafast")
    summary = ingest.prepare(gap, tmp_path / "gap_ds", size=64, progress=False)
    assert summary["lost_ranges"] == [(10, 14)]
    data = ds.PreparedDataset(tmp_path / "gap_ds")
    assert not data.landmarks_found[10:14].any() and data.landmarks_found[:10].all()
    mid = data.landmarks[12]  # interpolated halfway between frames 9 and 14 (approximately)
    np.testing.assert_allclose(mid, 0.4 * data.landmarks[9] + 0.6 * data.landmarks[14], atol=1e-3)
    long_gap = tmp_path / "long.mp4"
    media.write_mp4(long_gap, [np.zeros_like(f[::4, ::4]) if i >= 10 else f[::4, ::4] for i, f in enumerate(frames)],
                    audio=(wav[: int(1.6 * sr)], sr), preset="ultrafast")
    with pytest.raises(MediaError, match="face lost in 75% of frames"):
        ingest.prepare(long_gap, tmp_path / "long_ds", size=64, progress=False)


def test_prepare_cli(shared_data, tmp_path, capsys):
    from ggtalker_jax import cli

    feats = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)  # 1.2 s at 50 Hz
    np.save(tmp_path / "hubert.npy", feats)
    rc = cli.main(["prepare", "--video", str(shared_data / "retalking_face3_5s.mp4"), "--out", str(tmp_path / "d"),
                   "--size", "64", "--max_seconds", "1.2", "--features", str(tmp_path / "hubert.npy"),
                   "--noprogress", "--preview", str(tmp_path / "prev")])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 30
    data = ds.PreparedDataset(tmp_path / "d")
    assert data.audio_features.shape == (30, 8) and data.meta["features"]["kind"] == "external"
    np.testing.assert_allclose(data.audio_features[5], 0.5 * (feats[10] + feats[11]), atol=1e-5)
    assert len(list((tmp_path / "prev").glob("*.png"))) == 3
    assert cli.main(["prepare", "--video", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "e"),
                     "--noprogress"]) == 2
    assert "none.mp4: file not found" in capsys.readouterr().err
