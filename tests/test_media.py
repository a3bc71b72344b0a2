"""Video I/O: write_mp4 + read back, fps resampling, probing, bad files."""
import subprocess

import numpy as np
import pytest

from ggtalker_jax.audio.io import ffmpeg_exe, load_audio
from ggtalker_jax import media
from ggtalker_jax.errors import MediaError


def _frames(n, h=48, w=64):
    """Frame i is a flat grey level 5*i (recoverable after lossy coding)."""
    for i in range(n):
        yield np.full((h, w, 3), 5 * i, np.uint8)


def test_write_mp4_read_back_with_audio(tmp_path):
    sr = 16000
    wav = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(0.5 * sr)) / sr)  # 0.5 s: shorter than video
    out = tmp_path / "v.mp4"
    n = media.write_mp4(out, _frames(25, 48, 64), fps=25, audio=(wav, sr))
    assert n == 25 and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp leftovers
    info = media.probe_video(out)
    assert (info.width, info.height, info.has_audio) == (64, 48, True)
    assert info.fps == pytest.approx(25)
    assert info.duration == pytest.approx(1.0, abs=0.07)
    frames = list(media.read_video(out, fps=25))
    assert len(frames) == 25 and frames[0].shape == (48, 64, 3)
    levels = [float(f.mean()) for f in frames]
    np.testing.assert_allclose(levels, 5 * np.arange(25), atol=2.5)
    audio, _ = media.extract_audio(out)
    assert audio.size / sr == pytest.approx(1.0, abs=0.07)  # padded to the video duration
    assert np.sqrt(np.mean(audio[2000:6000] ** 2)) > 0.1 and np.abs(audio[10000:14000]).max() < 0.01


def test_write_mp4_odd_size_and_audio_cut(tmp_path):
    sr = 16000
    wav = 0.3 * np.sin(np.arange(3 * sr) * 0.2)  # 3 s of audio for 0.4 s of video
    out = tmp_path / "odd.mp4"
    media.write_mp4(out, _frames(10, 31, 45), fps=25, audio=(wav, sr))
    info = media.probe_video(out)
    assert (info.width, info.height) == (46, 32)
    audio, _ = load_audio(out)
    assert audio.size / sr == pytest.approx(0.4, abs=0.07)


def test_read_video_resamples_30_to_25_fps(tmp_path):
    out = tmp_path / "v30.mp4"
    media.write_mp4(out, _frames(30), fps=30)  # 1 s, grey level 5*i at time i/30
    frames = list(media.read_video(out, fps=25))
    assert len(frames) == 25
    got = np.array([f.mean() / 5 for f in frames])
    # output frame t (time t/25) = the nearest source frame round(t*30/25) (ties may go either way)
    expected = np.arange(25) * 30 / 25
    assert np.all(np.abs(got - expected) <= 0.5 + 0.5)
    assert np.all(np.diff(np.round(got)) >= 1)  # monotone, no repeats when downsampling
    native = list(media.read_video(out, fps=None))
    assert len(native) == 30
    assert len(list(media.read_video(out, fps=25, max_seconds=0.4))) == 10


def test_bad_video_files(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        media.probe_video(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        list(media.read_video(tmp_path / "empty.mp4"))
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(MediaError, match="junk.mp4"):
        list(media.read_video(tmp_path / "junk.mp4"))
    with pytest.raises(ValueError, match="uint8"):
        media.write_mp4(tmp_path / "x.mp4", [np.zeros((8, 8, 3), np.float32)])


def test_read_real_vfr_and_hevc(shared_data):
    info = media.probe_video(shared_data / "retalking_face1_6s.mp4")
    assert info.has_audio and (info.width, info.height) == (700, 700)
    frames = list(media.read_video(shared_data / "retalking_face1_6s.mp4", fps=25, max_seconds=1.0))
    assert len(frames) == 25
    hevc = media.read_video(shared_data / "latentsync_fullbody_10s.mp4", fps=25, max_seconds=0.2)
    first = next(hevc)
    hevc.close()
    assert first.shape == (1920, 1080, 3) and first.std() > 10


def test_write_mp4_audio_from_path(tmp_path):
    from ggtalker_jax.audio.io import write_wav

    sr = 16000
    write_wav(tmp_path / "a.wav", 0.2 * np.sin(np.arange(sr) * 0.3), sr)
    out = tmp_path / "p.mp4"
    media.write_mp4(out, _frames(20, 16, 16), fps=25, audio=tmp_path / "a.wav")
    audio, _ = load_audio(out)
    assert media.probe_video(out).has_audio and audio.size / sr == pytest.approx(0.8, abs=0.07)
    with pytest.raises(MediaError, match="nope.wav: file not found"):
        media.write_mp4(tmp_path / "q.mp4", _frames(2), audio=tmp_path / "nope.wav")


def test_audio_only_and_still_images_are_named_for_what_they_are(tmp_path):
    from ggtalker_jax.audio.io import write_wav
    wav = tmp_path / "speech.m4a"
    write_wav(tmp_path / "s.wav", 0.1 * np.sin(np.arange(16000) * 0.1).astype(np.float32), 16000)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(tmp_path / "s.wav"), str(wav)], check=True)
    with pytest.raises(MediaError, match="no video stream.*audio"):
        media.probe_video(wav)
    import cv2
    png = tmp_path / "face.png"
    cv2.imwrite(str(png), np.full((64, 64, 3), 120, np.uint8))
    with pytest.raises(MediaError, match="still image"):
        media.probe_video(png)


def test_truncated_faststart_mp4_is_not_a_shorter_clip(tmp_path):
    """A faststart mp4 cut in the middle still announces its full length; prepare must say it is truncated."""
    from ggtalker_jax.data import ingest
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(100)]
    full = tmp_path / "full.mp4"
    media.write_mp4(full, frames, fps=25, audio=(0.1 * np.sin(np.arange(64000) * 0.1), 16000), preset="ultrafast")
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert media.probe_video(cut).duration == pytest.approx(4.0, abs=0.1)      # the header still says 4 s
    with pytest.raises(MediaError, match="truncated"):
        ingest.prepare(cut, tmp_path / "ds", size=32, progress=False)
