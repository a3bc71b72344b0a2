"""Per-video-frame audio features: log-mel windows, resampled external features, RMS energy.

Alignment convention (shared by every function here): video frame ``t`` covers the audio interval
``[t / fps, (t + 1) / fps)``. A clip of duration ``D`` seconds has ``T = round(D * fps)`` frames.

Log-mel (`log_mel_per_frame`): hop ``= sr / (fps * mels_per_frame)`` samples (160 at 16 kHz / 25 fps /
4), Hann window of 400 samples. Mel frame ``j`` is centred on the hop block ``[j * hop, (j + 1) * hop)``
(the waveform is padded by ``(win - hop) / 2`` on the left), so video frame ``t`` gets the
``mels_per_frame`` consecutive mel frames ``j = t * mels_per_frame + k`` that all lie inside its interval.
Values are ``log(mel_power + 1e-6)`` (natural log, power spectrum, Slaney mel filters up to sr/2); with
``normalize="clip"`` (default) each mel band is then z-scored over the clip (mean 0 / std 1; makes the
features invariant to recording gain and microphone colouring), with ``normalize="none"`` they are returned
raw. The ``mels_per_frame`` sub-frames are flattened time-major: feature ``[t, k * n_mels + m]``.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from ggtalker_jax.errors import MediaError

LOG_MEL_EPS = 1e-6


def num_video_frames(num_samples: int, sr: int, fps: float) -> int:
    """``T = round(duration * fps)`` for a clip of `num_samples` samples."""
    return int(round(num_samples / float(sr) * fps))


def _check_wav(wav: Any, name: str) -> np.ndarray:
    wav = np.asarray(wav, np.float64)
    if wav.ndim == 2:
        wav = wav.mean(axis=-1)
    if wav.ndim != 1:
        raise ValueError(f"{name}: wav must be [S] or [S, channels], got shape {wav.shape}")
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"{name}: wav contains NaN/inf")
    return wav


def log_mel_per_frame(wav: Any, sr: int = 16000, fps: float = 25, n_mels: int = 80,
                      mels_per_frame: int = 4, num_frames: int | None = None, win_length: int = 400,
                      normalize: str = "clip") -> np.ndarray:
    """Log-mel features grouped per video frame.

    Args:
      wav: mono waveform ``[S]`` (``[S, C]`` is averaged to mono).
      sr, fps: sample rate and video frame rate; ``sr / (fps * mels_per_frame)`` must be an integer.
      n_mels: mel bands.
      mels_per_frame: mel frames per video frame.
      num_frames: ``T``; default ``round(S / sr * fps)``. Audio is zero-padded / cut to ``T`` frames.
      normalize: ``"clip"`` (per-band z-score over the clip) or ``"none"``.
    Returns:
      float32 ``[T, n_mels * mels_per_frame]``.
    """
    import librosa

    wav = _check_wav(wav, "log_mel_per_frame")
    hop_f = sr / (fps * mels_per_frame)
    hop = int(round(hop_f))
    if abs(hop - hop_f) > 1e-6:
        raise ValueError(f"log_mel_per_frame: sr/(fps*mels_per_frame) = {hop_f} must be an integer "
                         "(e.g. sr=16000, fps=25, mels_per_frame=4 -> 160)")
    if normalize not in ("clip", "none"):
        raise ValueError(f"log_mel_per_frame: normalize must be 'clip' or 'none', got {normalize!r}")
    if num_frames is None:
        num_frames = num_video_frames(wav.size, sr, fps)
    if num_frames <= 0:
        raise ValueError(f"log_mel_per_frame: clip too short ({wav.size} samples at {sr} Hz gives 0 frames)")
    n_mel_frames = num_frames * mels_per_frame
    total = n_mel_frames * hop
    wav = np.pad(wav[:total], (0, max(0, total - wav.size)))
    left = (win_length - hop) // 2
    padded = np.pad(wav, (left, win_length - hop - left))
    n_fft = win_length  # frame j = padded[j*hop : j*hop + win] exactly (no extra n_fft centring)
    mel = librosa.feature.melspectrogram(
        y=padded, sr=sr, n_fft=n_fft, hop_length=hop, win_length=win_length, window="hann",
        center=False, power=2.0, n_mels=n_mels, fmin=0.0, fmax=sr / 2.0)  # [n_mels, frames]
    mel = mel[:, :n_mel_frames]
    logmel = np.log(mel + LOG_MEL_EPS).T  # [T*k, n_mels]
    if normalize == "clip":
        logmel = (logmel - logmel.mean(0, keepdims=True)) / (logmel.std(0, keepdims=True) + 1e-5)
    return logmel.reshape(num_frames, mels_per_frame * n_mels).astype(np.float32)


def resample_features(features: Any, num_frames: int, feature_fps: float = 50.0,
                      fps: float = 25.0) -> np.ndarray:
    """Linearly interpolate per-time features ``[S, D]`` at ``feature_fps`` to ``[T, D]`` at ``fps``.

    Feature ``i`` is taken to describe the centre time ``(i + 0.5) / feature_fps``; video frame ``t``
    samples time ``(t + 0.5) / fps``. Times beyond the ends are clamped (edge values repeated).
    """
    feats = np.asarray(features, np.float32)
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"resample_features: features must be [S, D] with S > 0, got {feats.shape}")
    if not np.all(np.isfinite(feats)):
        raise ValueError("resample_features: features contain NaN/inf")
    pos = (np.arange(num_frames) + 0.5) * (feature_fps / fps) - 0.5
    pos = np.clip(pos, 0.0, feats.shape[0] - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, feats.shape[0] - 1)
    w = (pos - i0)[:, None].astype(np.float32)
    return (1.0 - w) * feats[i0] + w * feats[i1]


def load_external_features(path: str | os.PathLike, num_frames: int, feature_fps: float = 50.0,
                           fps: float = 25.0) -> np.ndarray:
    """Load precomputed features (e.g. 50 Hz HuBERT / wav2vec2) ``.npy [S, D]`` (or ``[1, S, D]``) and
    resample them to ``[num_frames, D]`` float32 (see `resample_features`)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio feature file not found (expected a .npy array [S, D])")
    try:
        feats = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise MediaError(f"{path}: cannot read as .npy ({e}); save features with numpy.save") from e
    expected = num_frames * feature_fps / fps
    s = feats.shape[-2] if feats.ndim >= 2 else 0
    if s and abs(s - expected) > max(2.0, 0.05 * expected):
        raise MediaError(f"{path}: has {s} feature frames, expected ~{expected:.0f} for {num_frames} video "
                         f"frames at {fps} fps with features at {feature_fps} Hz; wrong clip or feature_fps?")
    try:
        return resample_features(feats, num_frames, feature_fps, fps)
    except ValueError as e:
        raise MediaError(f"{path}: {e}") from e


def audio_energy_per_frame(wav: Any, sample_rate: int, fps: float, num_frames: int | None = None) -> np.ndarray:
    """RMS energy of a mono waveform in windows aligned to video frames -> ``[T]`` float64.

    Frame t covers samples ``[t * sr / fps, (t + 1) * sr / fps)``; default ``T = floor(S * fps / sr)``;
    frames past the end of the audio get 0.
    """
    wav = np.asarray(wav, np.float64)
    if wav.ndim == 2:
        wav = wav.mean(axis=-1)
    if wav.ndim != 1:
        raise ValueError(f"audio_energy_per_frame: wav must be [S] or [S, channels], got {wav.shape}")
    hop = sample_rate / float(fps)
    if num_frames is None:
        num_frames = int(len(wav) // hop)
    edges = np.rint(np.arange(num_frames + 1) * hop).astype(np.int64)
    sq = np.concatenate([[0.0], np.cumsum(wav * wav)])
    lo = np.minimum(edges[:-1], wav.size)
    hi = np.minimum(edges[1:], wav.size)
    count = hi - lo
    energy = (sq[hi] - sq[lo]) / np.maximum(count, 1)
    return np.where(count > 0, np.sqrt(np.maximum(energy, 0.0)), 0.0)
