"""Head-centred square crop windows from face landmarks, smoothed over time.

Per frame the face is measured from its MediaPipe landmarks ``[478, 3]``: the centre of their bounding
box and its larger side ``face_size``. The crop is a square of side ``crop_scale * face_size`` (default
2.0: the face fills about half the crop, leaving the hair, ears and some neck, like the 512x512 crops of
AD-NeRF / ER-NeRF / GGTalker), centred ``up_shift * side`` (0.07)  above the face centre (hair takes more room than
the chin). Over time the centre is Gaussian-smoothed (``sigma_frames``), missing frames are linearly
interpolated (held at the ends), and the side is the clip median (a fixed zoom: no breathing of the crop).
Boxes are ``(x0, y0, side)`` integers in source pixels; a box is shifted to stay inside the frame when it
fits, and the part outside the frame is edge-padded by `crop_and_resize` otherwise.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class CropConfig:
    crop_scale: float = 2.0
    up_shift: float = 0.07
    sigma_frames: float = 3.0
    fixed_size: bool = True  # clip-median side (else the side is smoothed like the centre)
    keep_inside: bool = True  # shift boxes into the frame when they fit


def face_centre_and_size(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[T, N, 2+]`` landmarks (NaN rows for missing frames) -> centres ``[T, 2]``, sizes ``[T]`` (NaN if missing)."""
    pts = np.asarray(landmarks, np.float64)[..., :2]
    if pts.ndim != 3:
        raise ValueError(f"face_centre_and_size: landmarks must be [T, N, 2|3], got {pts.shape}")
    with np.errstate(all="ignore"), _nan_ok():
        lo, hi = np.nanmin(pts, axis=1), np.nanmax(pts, axis=1)
    return (lo + hi) / 2.0, np.max(hi - lo, axis=1)


class _nan_ok:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def interpolate_missing(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linearly interpolate rows of ``[T, ...]`` where ``valid [T]`` is False (ends held constant)."""
    values = np.asarray(values, np.float64)
    valid = np.asarray(valid, bool)
    if not valid.any():
        raise ValueError("interpolate_missing: no valid frame to interpolate from")
    t = np.arange(values.shape[0])
    flat = values.reshape(values.shape[0], -1)
    out = np.stack([np.interp(t, t[valid], flat[valid, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape(values.shape)


def gaussian_smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter along axis 0 of ``[T, ...]`` with edge-reflecting boundaries (no smoothing if sigma<=0)."""
    values = np.asarray(values, np.float64)
    if sigma <= 0 or values.shape[0] < 2:
        return values
    radius = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(values, [(radius, radius)] + [(0, 0)] * (values.ndim - 1), mode="reflect"
                 if values.shape[0] > radius else "edge")
    flat = pad.reshape(pad.shape[0], -1)
    out = np.stack([np.convolve(flat[:, j], k, mode="valid") for j in range(flat.shape[1])], axis=1)
    return out.reshape(values.shape)


def crop_boxes(landmarks: np.ndarray, found: np.ndarray, frame_hw: tuple[int, int],
               config: CropConfig = CropConfig()) -> np.ndarray:
    """Smoothed square crop boxes for a clip.

    Args:
      landmarks: ``[T, 478, 3]`` source-pixel landmarks (rows of missing frames are ignored).
      found: ``[T]`` bool.
      frame_hw: source ``(H, W)``.
    Returns:
      int64 ``[T, 3]`` boxes ``(x0, y0, side)``.
    """
    found = np.asarray(found, bool)
    if landmarks.shape[0] != found.shape[0]:
        raise ValueError(f"crop_boxes: landmarks {landmarks.shape} and found {found.shape} disagree on T")
    centre, size = face_centre_and_size(landmarks)
    ok = found & np.isfinite(size) & (size > 0)
    if not ok.any():
        raise ValueError("crop_boxes: no frame with a face")
    centre = gaussian_smooth(interpolate_missing(centre, ok), config.sigma_frames)
    if config.fixed_size:
        side = np.full(found.shape[0], np.median(size[ok]) * config.crop_scale)
    else:
        side = gaussian_smooth(interpolate_missing(size, ok), config.sigma_frames) * config.crop_scale
    side = np.maximum(np.round(side), 8).astype(np.int64)
    cx = centre[:, 0]
    cy = centre[:, 1] - config.up_shift * side
    x0 = np.round(cx - side / 2.0).astype(np.int64)
    y0 = np.round(cy - side / 2.0).astype(np.int64)
    if config.keep_inside:
        h, w = frame_hw
        x0 = np.where(side <= w, np.clip(x0, 0, w - side), x0)
        y0 = np.where(side <= h, np.clip(y0, 0, h - side), y0)
    return np.stack([x0, y0, side], axis=1)


def crop_and_resize(frame: np.ndarray, box, size: int, interpolation: int | None = None) -> np.ndarray:
    """Cut the square ``box = (x0, y0, side)`` out of ``frame [H, W, C]`` (edge-padded where it leaves the
    frame) and resize it to ``[size, size, C]`` (area interpolation when shrinking, else bicubic)."""
    import cv2

    x0, y0, side = (int(v) for v in box)
    h, w = frame.shape[:2]
    if side <= 0:
        raise ValueError(f"crop_and_resize: box side must be positive, got {box}")
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if xb <= xa or yb <= ya:
        raise ValueError(f"crop_and_resize: box {box} lies outside the {w}x{h} frame")
    patch = frame[ya:yb, xa:xb]
    pads = (ya - y0, y0 + side - yb, xa - x0, x0 + side - xb)
    if any(pads):
        patch = cv2.copyMakeBorder(patch, *pads, borderType=cv2.BORDER_REPLICATE)
    if interpolation is None:
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    out = cv2.resize(patch, (size, size), interpolation=interpolation)
    return out.reshape(size, size, *frame.shape[2:])


def landmarks_to_crop(landmarks: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Map source-pixel landmarks ``[T, N, 3]`` into crop pixels of ``[size, size]`` crops (z scaled like x)."""
    boxes = np.asarray(boxes, np.float64)
    scale = (size / boxes[:, 2])[:, None, None]
    offset = np.concatenate([boxes[:, :2], np.zeros((boxes.shape[0], 1))], axis=1)[:, None, :]
    return ((np.asarray(landmarks, np.float64) - offset) * scale).astype(np.float32)
