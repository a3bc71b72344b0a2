"""Evaluation metrics for talking-head synthesis: PSNR, SSIM / D-SSIM, LMD, mouth opening, lip sync, AUE.

Image metrics (`psnr`, `ssim`, `dssim_loss`) are pure JAX and differentiable; they take images
``[..., H, W, C]`` with values in ``[0, max_val]`` and reduce over ``H, W, C`` to ``[...]``.
Landmark / signal metrics (`lmd`, `mouth_opening`, `sync_score`, `aue`) are NumPy: they run once per
evaluation on small arrays. `face_mesh_landmarks` / `lmd_from_frames` run MediaPipe Face Mesh (offline,
bundled model) on frame sequences. `fps_breakdown` times pipeline stages.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from ggtalker_jax.audio.features import audio_energy_per_frame  # noqa: F401  (re-exported)
from ggtalker_jax.constants import (LEFT_INNER_CORNER, LOWER_INNER_LIP, MEDIAPIPE_LIPS,  # noqa: F401  (re-exported)
                                    RIGHT_INNER_CORNER, UPPER_INNER_LIP)
from ggtalker_jax.image_metrics import dssim_loss, psnr, ssim, ssim_map  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------------
# Landmark metrics (NumPy)
# --------------------------------------------------------------------------------------------
def _as_landmarks(x: Any, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 3 or x.shape[-1] not in (2, 3):
        raise ValueError(f"{name}: landmarks must be [T, L, 2|3], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: landmarks contain NaN/inf (frames where no face was found?)")
    return x


def lmd(landmarks_pred: Any, landmarks_gt: Any, indices: Sequence[int] | None = MEDIAPIPE_LIPS,
        normalize_by: float | None = None) -> float:
    """Landmark distance: mean Euclidean distance over frames and the selected landmarks.

    Args:
      landmarks_pred, landmarks_gt: ``[T, L, 2|3]`` in the same coordinates (pixels or normalised).
      indices: landmark indices to compare (default: MediaPipe lips, i.e. mouth LMD); ``None`` = all.
      normalize_by: optional scale (e.g. image width or face size) the distance is divided by.
    Returns:
      scalar LMD.
    """
    p = _as_landmarks(landmarks_pred, "lmd(landmarks_pred)")
    g = _as_landmarks(landmarks_gt, "lmd(landmarks_gt)")
    if p.shape != g.shape:
        raise ValueError(f"lmd: landmarks_pred {p.shape} and landmarks_gt {g.shape} differ in shape")
    if indices is not None:
        idx = np.asarray(indices, np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= p.shape[1]:
            raise ValueError(f"lmd: indices must lie in [0, {p.shape[1]}), got range "
                             f"[{idx.min() if idx.size else None}, {idx.max() if idx.size else None}]")
        p, g = p[:, idx], g[:, idx]
    dist = float(np.mean(np.linalg.norm(p - g, axis=-1)))
    if normalize_by is not None:
        if not normalize_by > 0:
            raise ValueError(f"lmd: normalize_by must be > 0, got {normalize_by}")
        dist /= float(normalize_by)
    return dist


def mouth_opening(landmarks: Any) -> np.ndarray:
    """Mouth opening per frame: inner-lip gap |p13 - p14| over inner mouth width |p78 - p308|.

    Scale free (0 for a closed mouth, about 0.3-0.6 for a wide open one).

    Args:
      landmarks: MediaPipe face-mesh landmarks ``[T, 468|478, 2|3]`` (pixels or normalised).
    Returns:
      ``[T]`` float64.
    """
    lm = _as_landmarks(landmarks, "mouth_opening(landmarks)")
    if lm.shape[1] < 468:
        raise ValueError(f"mouth_opening: expects MediaPipe face-mesh landmarks [T, 468|478, 2|3], "
                         f"got {lm.shape}")
    return mouth_opening_from_points(lm[:, UPPER_INNER_LIP], lm[:, LOWER_INNER_LIP], lm[:, LEFT_INNER_CORNER],
                                     lm[:, RIGHT_INNER_CORNER])


def mouth_opening_from_points(upper: Any, lower: Any, left: Any, right: Any) -> np.ndarray:
    """Mouth opening |upper - lower| / |left - right| from the inner-lip points, each ``[T, 2|3]`` -> ``[T]``."""
    upper, lower, left, right = (np.asarray(x, np.float64) for x in (upper, lower, left, right))
    gap = np.linalg.norm(upper - lower, axis=-1)
    width = np.linalg.norm(left - right, axis=-1)
    return gap / np.maximum(width, 1e-8)


def face_mesh_landmarks(frames: Any) -> np.ndarray:
    """Run MediaPipe Face Mesh (video mode, refined: 478 points) on a frame sequence.

    Args:
      frames: ``[T, H, W, 3]`` RGB, uint8 or float in [0, 1].
    Returns:
      ``[T, 478, 3]`` float64 in pixels (x, y; z in the same pixel scale as x). Frames without a
      detected face are NaN.
    """
    import mediapipe as mp  # local import: heavy, only needed for frame-based LMD

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"face_mesh_landmarks: frames must be [T, H, W, 3] RGB, got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    t, h, w, _ = frames.shape
    out = np.full((t, 478, 3), np.nan)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1,
                                         refine_landmarks=True) as mesh:
        for i in range(t):
            res = mesh.process(np.ascontiguousarray(frames[i]))
            if res.multi_face_landmarks:
                pts = res.multi_face_landmarks[0].landmark
                out[i] = [(p.x * w, p.y * h, p.z * w) for p in pts]
    return out


def lmd_from_frames(frames_pred: Any, frames_gt: Any, indices: Sequence[int] | None = MEDIAPIPE_LIPS,
                    normalize_by: float | None = None, use_z: bool = False) -> float:
    """Mouth LMD between two frame sequences ``[T, H, W, 3]`` via MediaPipe Face Mesh, in pixels.

    Frames where either sequence has no detected face are skipped; raises if none is left.
    ``use_z=False`` compares 2-D image positions (the usual LMD).
    """
    lp = face_mesh_landmarks(frames_pred)
    lg = face_mesh_landmarks(frames_gt)
    if lp.shape != lg.shape:
        raise ValueError(f"lmd_from_frames: sequences differ in length/size: {lp.shape} vs {lg.shape}")
    ok = np.all(np.isfinite(lp), axis=(1, 2)) & np.all(np.isfinite(lg), axis=(1, 2))
    if not ok.any():
        raise ValueError("lmd_from_frames: MediaPipe found no face in any frame pair")
    dims = slice(None) if use_z else slice(0, 2)
    return lmd(lp[ok][..., dims], lg[ok][..., dims], indices, normalize_by)


# --------------------------------------------------------------------------------------------
# Lip sync without a learned model
# --------------------------------------------------------------------------------------------
class SyncResult(NamedTuple):
    """Result of `sync_score`. correlations: ``[2 * max_offset + 1]`` for offsets -max..max."""
    best_offset_frames: int
    confidence: float
    corr_at_0: float
    offsets: np.ndarray
    correlations: np.ndarray


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)


def sync_score(audio_energy: Any, mouth_open: Any, max_offset: int = 15,
               differentiate: bool = True) -> SyncResult:
    """Model-free lip-sync score from the cross-correlation of audio energy and mouth opening.

    Both signals are (optionally first-differenced, which removes slow drift and emphasises onsets,
    then) z-scored. For each offset ``k`` in ``[-max_offset, max_offset]`` the Pearson correlation of
    ``audio[t]`` with ``mouth[t + k]`` over the overlap is computed.

    Sign convention: a positive ``best_offset_frames = k`` means the video LAGS the audio by ``k``
    frames (the mouth moves ``k`` frames after the sound); shift the video ``k`` frames earlier to fix.

    ``confidence`` = peak correlation minus the median correlation over all offsets (the analogue of
    SyncNet's confidence = median - min distance): near 0 for unrelated signals, larger when one offset
    clearly stands out.

    Args:
      audio_energy: ``[T]`` per-video-frame audio energy (see `audio_energy_per_frame`).
      mouth_open: ``[T]`` per-frame mouth opening (see `mouth_opening`).
      max_offset: largest shift tried, in frames; needs ``T > 2 * max_offset + 2``.
    """
    a = np.asarray(audio_energy, np.float64).reshape(-1)
    m = np.asarray(mouth_open, np.float64).reshape(-1)
    if a.shape != m.shape:
        raise ValueError(f"sync_score: audio_energy {a.shape} and mouth_open {m.shape} must have the "
                         "same length (one value per video frame)")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(m))):
        raise ValueError("sync_score: inputs contain NaN/inf (interpolate frames without a face first)")
    if max_offset < 0 or a.size <= 2 * max_offset + 2:
        raise ValueError(f"sync_score: need 0 <= max_offset and T > 2*max_offset+2; got T={a.size}, "
                         f"max_offset={max_offset}")
    if differentiate:
        a, m = np.diff(a), np.diff(m)
    a, m = _zscore(a), _zscore(m)
    n = a.size
    offsets = np.arange(-max_offset, max_offset + 1)
    corrs = np.zeros(offsets.size)
    for i, k in enumerate(offsets):
        if k >= 0:
            x, y = a[:n - k], m[k:]
        else:
            x, y = a[-k:], m[:n + k]
        x, y = _zscore(x), _zscore(y)
        corrs[i] = float(np.mean(x * y))
    best = int(np.argmax(corrs))
    return SyncResult(
        best_offset_frames=int(offsets[best]),
        confidence=float(corrs[best] - np.median(corrs)),
        corr_at_0=float(corrs[max_offset]),
        offsets=offsets,
        correlations=corrs,
    )


# --------------------------------------------------------------------------------------------
# Expression error
# --------------------------------------------------------------------------------------------
def aue(expr_pred: Any, expr_gt: Any, per_dim: bool = False) -> float | np.ndarray:
    """Action-unit-like error: mean absolute error between expression coefficients.

    The field's AUE compares facial action-unit intensities (e.g. from OpenFace) between generated and
    real frames by mean absolute error. Here the "action units" are the 53 expression coefficients
    (or any ``D``-dim expression code) that the A2E model predicts, so AUE = mean over frames and dims
    of ``|pred - gt|``. With ``per_dim=True`` returns the ``[D]`` per-coefficient errors instead.

    Args:
      expr_pred, expr_gt: ``[T, D]`` (or ``[D]``) expression coefficients.
    """
    p = np.asarray(expr_pred, np.float64)
    g = np.asarray(expr_gt, np.float64)
    if p.shape != g.shape:
        raise ValueError(f"aue: expr_pred {p.shape} and expr_gt {g.shape} must have the same shape")
    if p.size == 0:
        raise ValueError("aue: empty expression arrays")
    err = np.abs(p - g).reshape(-1, p.shape[-1])
    return err.mean(axis=0) if per_dim else float(err.mean())


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def fps_breakdown(stages: Mapping[str, Callable[[], Any]], warmup: int = 2, iters: int = 10,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Time pipeline stages (e.g. A2E, Gaussian generation, rasterization, inpainting) per frame.

    Each stage is a zero-argument callable producing one frame's worth of work; its output is passed
    to `jax.block_until_ready` so asynchronous dispatch is included. Each stage runs ``warmup`` times
    untimed (compilation), then ``iters`` timed runs.

    Returns:
      ``{"<stage>_ms": mean ms, ..., "total_ms": sum of stage ms, "fps": 1000 / total_ms}``.
    """
    if not stages:
        raise ValueError("fps_breakdown: no stages given")
    if iters < 1 or warmup < 0:
        raise ValueError(f"fps_breakdown: need iters >= 1 and warmup >= 0, got {iters}, {warmup}")
    out: dict[str, float] = {}
    for name, fn in stages.items():
        for _ in range(warmup):
            jax.block_until_ready(fn())
        t0 = clock()
        for _ in range(iters):
            jax.block_until_ready(fn())
        out[f"{name}_ms"] = (clock() - t0) * 1000.0 / iters
    total = sum(out.values())
    out["total_ms"] = total
    out["fps"] = 1000.0 / total if total > 0 else float("inf")
    return out
