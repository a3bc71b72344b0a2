"""Person and head masks.

- `PersonSegmenter`: ``mediapipe.solutions.selfie_segmentation`` (offline) -> person probability ``[H, W]``.
- `head_mask`: convex hull of the face-mesh landmarks, extended upwards along the face's own up axis
  (chin -> forehead) by ``hair_extent`` face heights and widened by ``hair_widen`` to cover forehead and
  hair, optionally intersected with the person mask (so background above the hair is excluded).
- `hair_region`: the person mask above the chin line and within a band around the face: the hair and the
  top of the head, which the landmark hull misses; `head_with_hair` unites both (what adaptation scores
  and the avatar renders over: computed when frames are read, from the stored hull and person probability).
- `dilate`: grow a binary mask by a radius in pixels (the inpainter blends inside a dilated head mask).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ggtalker_jax.data.landmarks import CHIN, FOREHEAD_TOP


class PersonSegmenter:
    """``seg(frame uint8 [H, W, 3]) -> float32 [H, W]`` person probability in [0, 1]. Context manager."""

    def __init__(self, model_selection: int = 0):
        import mediapipe as mp

        self._seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"PersonSegmenter: frame must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
        res = self._seg.process(np.ascontiguousarray(frame))
        return np.clip(np.asarray(res.segmentation_mask, np.float32), 0.0, 1.0)


def head_mask(landmarks: np.ndarray, hw: tuple[int, int], person: np.ndarray | None = None,
              hair_extent: float = 0.45, hair_widen: float = 1.15, person_threshold: float = 0.5) -> np.ndarray:
    """Binary head mask ``bool [H, W]`` from landmarks ``[478, 2|3]`` in the same pixel frame.

    Returns all-False when the landmarks are NaN (no face)."""
    import cv2

    pts = np.asarray(landmarks, np.float64)[:, :2]
    h, w = hw
    if not np.all(np.isfinite(pts)):
        return np.zeros((h, w), bool)
    up = pts[FOREHEAD_TOP] - pts[CHIN]
    face_h = float(np.linalg.norm(up))
    up = up / max(face_h, 1e-6)
    centre = pts.mean(axis=0)
    widened = centre + (pts - centre) * hair_widen
    raised = widened + up * (hair_extent * face_h)
    hull = cv2.convexHull(np.round(np.concatenate([pts, widened, raised])).astype(np.int32))
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1)
    mask = mask.astype(bool)
    if person is not None:
        if person.shape != (h, w):
            raise ValueError(f"head_mask: person mask {person.shape} must be {(h, w)}")
        mask &= person >= person_threshold
    return mask


def hair_region(landmarks: np.ndarray, person: np.ndarray, half_width: float = 0.8, below_chin: float = 0.0,
                person_threshold: float = 0.5) -> np.ndarray:
    """``bool [H, W]``: pixels of the person (probability ``person [H, W]`` >= `person_threshold`) above the
    line through the chin across the face's own up axis (chin -> forehead, lowered by `below_chin` face
    heights) and at most `half_width` face heights from the face's centre line: hair, the top and sides of
    the head, the ears, but not the neck and shoulders below the chin. `landmarks` [478, 2|3] in the same
    pixel frame; all-False when they are not finite."""
    pts = np.asarray(landmarks, np.float64)[:, :2]
    h, w = person.shape
    if not np.all(np.isfinite(pts)):
        return np.zeros((h, w), bool)
    up = pts[FOREHEAD_TOP] - pts[CHIN]
    face_h = float(np.linalg.norm(up))
    if face_h < 1e-6:
        return np.zeros((h, w), bool)
    up = up / face_h
    across = np.array([up[1], -up[0]])
    ys, xs = np.mgrid[0:h, 0:w]
    px = np.stack([xs + 0.5, ys + 0.5], -1)
    along = (px - pts[CHIN]) @ up                                  # height above the chin
    centre = 0.5 * (pts[CHIN] + pts[FOREHEAD_TOP])
    side = np.abs((px - centre) @ across)
    return (person >= person_threshold) & (along >= -below_chin * face_h) & (side <= half_width * face_h)


def head_with_hair(hull: np.ndarray, landmarks: np.ndarray, person: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: the stored head mask `hull` (bool [H, W], the landmark hull) united with
    `hair_region` of the landmarks and the person probability."""
    return np.asarray(hull, bool) | hair_region(landmarks, person)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a boolean ``[H, W]`` mask by `radius` pixels (elliptical structuring element)."""
    import cv2

    if radius <= 0:
        return np.asarray(mask, bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(np.asarray(mask, np.uint8), k).astype(bool)
