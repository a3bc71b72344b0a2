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

What a set of features is (`FeatureSpec`) travels with the data: `prepare` writes it into meta.json
("features"), the A2E prior stores the one it was trained on (priors.json), adaptation refuses a subject
whose features differ, and `render` computes the same kind for the driving audio (`FeatureSpec.compute`)
or, for external features, reads the matching precomputed file (`load_external_features`).

Speech activity (`speech_activity`): which frames belong to long pauses, so the renderer can rest the mouth
there.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from ggtalker_jax.errors import MediaError

LOG_MEL_EPS = 1e-6
FEATURE_KINDS = ("logmel", "external")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What per-frame audio features are: enough to compute the same ones for new audio, or to ask for them.

    kind: "logmel" (computed here from the waveform: `log_mel_per_frame` with `n_mels`, `mels_per_frame`,
      `normalize`) or "external" (precomputed by another model, e.g. HuBERT, stored as .npy rows at
      `feature_fps` Hz and resampled to the video frames).
    dim: Da, the feature width per video frame (the A2E's audio_dim).
    source: for external features, where the training features came from (a note; not compared).
    """
    kind: str = "logmel"
    dim: int = 320
    n_mels: int = 80
    mels_per_frame: int = 4
    normalize: str = "clip"
    feature_fps: float | None = None
    source: str | None = None

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"audio features: kind {self.kind!r} is not one of {FEATURE_KINDS}")
        if self.dim < 1:
            raise ValueError(f"audio features: dim must be >= 1, got {self.dim}")
        if self.kind == "logmel" and self.dim != self.n_mels * self.mels_per_frame:
            raise ValueError(f"audio features: log-mel with {self.n_mels} mels x {self.mels_per_frame} per frame "
                             f"has dim {self.n_mels * self.mels_per_frame}, not {self.dim}")

    @staticmethod
    def logmel(n_mels: int = 80, mels_per_frame: int = 4, normalize: str = "clip") -> "FeatureSpec":
        return FeatureSpec("logmel", n_mels * mels_per_frame, n_mels, mels_per_frame, normalize)

    @staticmethod
    def external(dim: int, feature_fps: float, source: str | None = None) -> "FeatureSpec":
        return FeatureSpec("external", int(dim), feature_fps=float(feature_fps), source=source)

    def to_dict(self) -> dict:
        if self.kind == "logmel":
            return {"kind": "logmel", "dim": self.dim, "n_mels": self.n_mels, "mels_per_frame": self.mels_per_frame,
                    "normalize": self.normalize}
        return {"kind": "external", "dim": self.dim, "feature_fps": self.feature_fps, "source": self.source}

    @staticmethod
    def from_dict(d: dict | None, dim: int | None = None) -> "FeatureSpec":
        """From meta.json / priors.json; `dim` (the stored array's width) fills in older records without one."""
        d = dict(d or {"kind": "logmel"})
        kind = d.get("kind", "logmel")
        width = int(d.get("dim") or dim or 320)
        if kind == "logmel":
            n_mels = int(d.get("n_mels", 80 if width % 80 == 0 else width))
            return FeatureSpec("logmel", width, n_mels, int(d.get("mels_per_frame", width // n_mels)),
                               str(d.get("normalize", "clip")))
        fps = d.get("feature_fps")
        return FeatureSpec(kind, width, feature_fps=None if fps is None else float(fps), source=d.get("source"))

    def same_features(self, other: "FeatureSpec") -> bool:
        """Whether features of `other` can drive a model trained on these (kind, width and, for log-mel, how
        they are computed; where external features came from is not checked)."""
        keys = ("kind", "dim") if self.kind == "external" else ("kind", "dim", "n_mels", "mels_per_frame", "normalize")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def describe(self) -> str:
        if self.kind == "logmel":
            return f"log-mel ({self.n_mels} mels x {self.mels_per_frame} per frame, {self.normalize} normalised, dim {self.dim})"
        src = f" from {self.source}" if self.source else ""
        return f"external features (dim {self.dim}{src})"

    def compute(self, wav: Any, sr: int, fps: float, num_frames: int | None = None) -> np.ndarray:
        """Features of a waveform [S] -> [T, dim] (log-mel kinds only; external ones must be given as a file)."""
        if self.kind != "logmel":
            raise MediaError(f"{self.describe()} cannot be computed from audio here; pass the precomputed "
                             "features of the driving audio (.npy [S, D]) and their rate")
        return log_mel_per_frame(wav, sr=sr, fps=fps, n_mels=self.n_mels, mels_per_frame=self.mels_per_frame,
                                 num_frames=num_frames, normalize=self.normalize)


def features_for(wav: Any, sr: int, fps: float, num_frames: int, features: str | os.PathLike = "logmel",
                 feature_fps: float = 50.0) -> tuple[np.ndarray, FeatureSpec]:
    """The features a dataset stores for its audio: ``features`` "logmel" (computed from `wav`) or a path to a
    precomputed ``.npy [S, D]`` at `feature_fps` Hz (resampled). Returns ([num_frames, D] float32, spec)."""
    if str(features) == "logmel":
        spec = FeatureSpec.logmel()
        return spec.compute(wav, sr, fps, num_frames), spec
    feats = load_external_features(features, num_frames, feature_fps, fps)
    return feats, FeatureSpec.external(feats.shape[1], feature_fps, str(features))


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


def frame_levels_dbfs(wav: Any, sample_rate: int, fps: float, num_frames: int | None = None) -> np.ndarray:
    """Per-frame RMS level in dBFS (full scale 1.0) -> [T] float64; -inf for digitally silent frames."""
    rms = audio_energy_per_frame(wav, sample_rate, fps, num_frames)
    with np.errstate(divide="ignore"):
        return np.where(rms > 0, 20.0 * np.log10(np.maximum(rms, 1e-300)), -np.inf)


def speech_activity(wav: Any, sample_rate: int, fps: float, num_frames: int | None = None,
                    silence_dbfs: float = -50.0, below_speech_db: float = 30.0, min_pause_s: float = 0.3,
                    ramp_s: float = 0.12) -> np.ndarray:
    """How much each video frame is speech, [T] float32 in [0, 1]: 0 inside long pauses, 1 in speech.

    A frame is quiet when its RMS level is below ``max(silence_dbfs, speech level - below_speech_db)`` (the
    speech level is the 95th percentile of the frame levels, so background noise of a loud recording counts
    as quiet). Quiet runs of at least `min_pause_s` are pauses; shorter ones (stops, closures between
    syllables) are speech. The weight falls linearly from 1 at the last speech frame to 0 `ramp_s` into a
    pause, so frames deeper inside a pause are exactly 0. Digital silence everywhere gives all zeros.
    """
    level = frame_levels_dbfs(wav, sample_rate, fps, num_frames)
    t = level.size
    finite = level[np.isfinite(level)]
    if finite.size == 0:
        return np.zeros(t, np.float32)
    threshold = max(silence_dbfs, float(np.percentile(finite, 95)) - below_speech_db)
    quiet = ~(level >= threshold)
    min_run = max(1, int(round(min_pause_s * fps)))
    pause = np.zeros(t, bool)
    i = 0
    while i < t:
        if quiet[i]:
            j = i
            while j < t and quiet[j]:
                j += 1
            if j - i >= min_run:
                pause[i:j] = True
            i = j
        else:
            i += 1
    speech = np.flatnonzero(~pause)
    if speech.size == 0:
        return np.zeros(t, np.float32)
    frames = np.arange(t)
    pos = np.clip(np.searchsorted(speech, frames), 1, speech.size) - 1
    nearest = np.minimum(np.abs(frames - speech[pos]), np.abs(frames - speech[np.minimum(pos + 1, speech.size - 1)]))
    ramp = max(1.0, ramp_s * fps)
    return np.clip(1.0 - nearest / ramp, 0.0, 1.0).astype(np.float32)
