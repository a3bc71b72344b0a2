"""Audio I/O and per-frame features: resampling, mono, alignment, external features, bad input."""
import subprocess

import numpy as np
import pytest
import soundfile

from ggtalker_jax.audio import features, io
from ggtalker_jax.errors import MediaError


def _dominant_freq(wav, sr):
    spec = np.abs(np.fft.rfft(wav * np.hanning(wav.size)))
    return np.fft.rfftfreq(wav.size, 1.0 / sr)[np.argmax(spec)]


def test_load_audio_resamples_and_mixes_to_mono(tmp_path):
    sr_in, dur, f0 = 44100, 1.0, 440.0
    t = np.arange(int(sr_in * dur)) / sr_in
    left = 0.5 * np.sin(2 * np.pi * f0 * t)
    stereo = np.stack([left, left], axis=1)  # identical channels -> mono equals either
    path = tmp_path / "sine.wav"
    soundfile.write(path, stereo, sr_in)
    wav, sr = io.load_audio(path, sr=16000)
    assert sr == 16000 and wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size - 16000) <= 1
    assert abs(_dominant_freq(wav, sr) - f0) < 2.0
    assert np.sqrt(np.mean(wav[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_load_audio_m4a_via_ffmpeg(tmp_path):
    sr_in = 22050
    t = np.arange(sr_in) / sr_in
    src = tmp_path / "a.wav"
    soundfile.write(src, 0.3 * np.sin(2 * np.pi * 1000 * t), sr_in)
    m4a = tmp_path / "a.m4a"
    subprocess.run([io.ffmpeg_exe(), "-v", "error", "-y", "-i", str(src), "-c:a", "aac", str(m4a)], check=True)
    wav, sr = io.load_audio(m4a, sr=16000)
    assert abs(wav.size / sr - 1.0) < 0.1
    assert abs(_dominant_freq(wav, sr) - 1000) < 3.0


def test_write_wav_roundtrip(tmp_path):
    wav = (0.25 * np.sin(np.linspace(0, 100, 8000))).astype(np.float32)
    io.write_wav(tmp_path / "x.wav", wav, 16000)
    back, sr = io.load_audio(tmp_path / "x.wav", 16000)
    np.testing.assert_allclose(back, wav, atol=1e-4)
    assert not list(tmp_path.glob(".*tmp*"))


def test_bad_audio_files_raise_clear_errors(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        io.load_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        io.load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.mp3").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError, match="junk.mp3"):
        io.load_audio(tmp_path / "junk.mp3")


def test_video_without_audio_stream(tmp_path):
    path = tmp_path / "silent_video.mp4"
    subprocess.run([io.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=32x32:d=0.4",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    with pytest.raises(MediaError, match="no audio stream"):
        io.load_audio(path)


def test_check_not_silent():
    with pytest.raises(MediaError, match="silent.*-inf dBFS"):
        io.check_not_silent(np.zeros(1600, np.float32), "zeros.wav")
    with pytest.raises(MediaError, match="-80.0 dBFS"):
        io.check_not_silent(np.full(1600, 1e-4, np.float32), "hiss.wav")
    assert io.check_not_silent(np.full(1600, 0.1, np.float32)) == pytest.approx(-20.0)


def test_log_mel_shape_and_click_alignment():
    sr, fps = 16000, 25
    dur = 2.0
    wav = np.zeros(int(sr * dur))
    click_frame = 17  # click in the middle of video frame 17
    c = int((click_frame + 0.5) * sr / fps)
    wav[c:c + 40] = 1.0
    feats = features.log_mel_per_frame(wav, sr, fps, normalize="none")
    assert feats.shape == (50, 320) and feats.dtype == np.float32
    energy = feats.reshape(50, 4, 80).max(axis=(1, 2))
    assert int(np.argmax(energy)) == click_frame
    # a click at a frame's first sample still belongs to that frame (not the previous one)
    wav2 = np.zeros_like(wav)
    c2 = int(30 * sr / fps)
    wav2[c2:c2 + 20] = 1.0
    e2 = features.log_mel_per_frame(wav2, sr, fps, normalize="none").reshape(50, 4, 80).mean(axis=2)
    assert np.argmax(e2.max(axis=1)) == 30
    assert np.argmax(e2[30]) == 0  # first sub-frame of frame 30


def test_log_mel_clip_normalisation_and_length():
    rng = np.random.default_rng(0)
    wav = rng.normal(0, 0.1, 16000 + 300)  # 1.019 s -> round(25.47) = 25 frames
    feats = features.log_mel_per_frame(wav)
    assert feats.shape == (25, 320)
    per_band = feats.reshape(100, 80)
    np.testing.assert_allclose(per_band.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(per_band.std(0), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="integer"):
        features.log_mel_per_frame(wav, sr=16000, fps=30)


def test_resample_external_features(tmp_path):
    s, d = 100, 3  # 2 s at 50 Hz
    feats = np.stack([np.arange(s), 2 * np.arange(s), np.ones(s)], 1).astype(np.float32)
    np.save(tmp_path / "f.npy", feats[None])
    out = features.load_external_features(tmp_path / "f.npy", num_frames=50, feature_fps=50)
    assert out.shape == (50, d)
    # video frame t centre (t+0.5)/25 s = feature position 2t + 0.5
    np.testing.assert_allclose(out[:, 0], 2 * np.arange(50) + 0.5, atol=1e-5)
    np.testing.assert_allclose(out[:, 1], 2 * out[:, 0], atol=1e-5)
    with pytest.raises(MediaError, match="has 100 feature frames, expected ~400"):
        features.load_external_features(tmp_path / "f.npy", num_frames=200)
    with pytest.raises(MediaError, match="not found"):
        features.load_external_features(tmp_path / "nope.npy", 10)


def test_audio_energy_per_frame_matches_loop():
    rng = np.random.default_rng(1)
    wav = rng.normal(size=16000 * 1 + 100)
    e = features.audio_energy_per_frame(wav, 16000, 25, num_frames=27)
    ref = [np.sqrt(np.mean(wav[t * 640:(t + 1) * 640] ** 2)) if t * 640 < wav.size else 0.0 for t in range(27)]
    np.testing.assert_allclose(e, ref, rtol=1e-9)
    assert e[-1] == 0.0


def test_feature_spec_round_trips_and_computes_what_it_says():
    spec = features.FeatureSpec.logmel()
    assert features.FeatureSpec.from_dict(spec.to_dict()) == spec and spec.dim == 320
    # meta.json of earlier datasets: {"kind", "dim"} only
    assert features.FeatureSpec.from_dict({"kind": "logmel", "dim": 320}) == spec
    ext = features.FeatureSpec.external(768, 50.0, "hubert.npy")
    assert features.FeatureSpec.from_dict(ext.to_dict()) == ext
    assert ext.same_features(features.FeatureSpec.external(768, 49.0, "other.npy"))   # the source is a note
    assert not ext.same_features(features.FeatureSpec.external(1024, 50.0)) and not spec.same_features(ext)
    wav = np.random.default_rng(0).normal(size=16000) * 0.1
    np.testing.assert_array_equal(spec.compute(wav, 16000, 25.0), features.log_mel_per_frame(wav, 16000, 25.0))
    with pytest.raises(MediaError, match="precomputed features"):
        ext.compute(wav, 16000, 25.0)
    with pytest.raises(ValueError, match="dim 320, not 300"):
        features.FeatureSpec("logmel", 300)


def test_speech_activity_finds_long_pauses_only():
    sr, fps = 16000, 25.0
    rng = np.random.default_rng(0)
    speech = lambda s: 0.1 * rng.normal(size=int(s * sr))  # noqa: E731
    wav = np.concatenate([speech(1.0), np.zeros(2 * sr), speech(1.0)])
    act = features.speech_activity(wav, sr, fps)
    assert act.shape == (100,) and act.dtype == np.float32
    np.testing.assert_array_equal(act[:25], 1.0)
    np.testing.assert_array_equal(act[75:], 1.0)
    np.testing.assert_array_equal(act[28:72], 0.0)                      # deep inside the pause: rest
    assert np.all(np.diff(act[24:28]) < 0) and np.all(np.diff(act[72:76]) > 0)   # a short ramp at the edges
    # a 0.1 s gap is part of speech; quiet background noise 60 dB under the speech is a pause
    short = np.concatenate([speech(1.0), np.zeros(int(0.1 * sr)), speech(1.0)])
    np.testing.assert_array_equal(features.speech_activity(short, sr, fps), 1.0)
    noisy = np.concatenate([speech(1.0), 1e-4 * rng.normal(size=sr), speech(1.0)])
    assert features.speech_activity(noisy, sr, fps)[32:43].max() == 0.0
    np.testing.assert_array_equal(features.speech_activity(np.zeros(3 * sr), sr, fps), 0.0)
