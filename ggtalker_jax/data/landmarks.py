"""MediaPipe Face Mesh landmarks (478 points with irises) per frame, in pixel coordinates.

`FaceLandmarker` wraps ``mediapipe.solutions.face_mesh.FaceMesh(refine_landmarks=True)`` (runs offline
with the model bundled in the wheel). Output per frame: ``[478, 3]`` float32 with ``x, y`` in pixels of
the given frame and ``z`` (depth relative to the face centre, smaller = closer to the camera) scaled by
the frame width like ``x`` (MediaPipe's convention), plus a found flag. Frames with no face give NaNs
and ``found=False``.

Small faces (a seated person in a tall 1080x1920 frame): MediaPipe's face detector is a short-range
model and misses faces that are small in the frame. When a frame has no face, `FaceLandmarker` retries on
overlapping square tiles of the frame (each resized by MediaPipe to its input size, so the face becomes
relatively larger), and in video mode tracks from a region of interest around the previous face.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ggtalker_jax.constants import NUM_LANDMARKS  # noqa: E402  (re-exported)
# Handy MediaPipe mesh indices.
NOSE_TIP = 1
CHIN = 152
FOREHEAD_TOP = 10
LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 263, 33
LEFT_IRIS_CENTER, RIGHT_IRIS_CENTER = 473, 468


@dataclasses.dataclass(frozen=True)
class LandmarkerConfig:
    """Face Mesh settings. ``static_image_mode=False`` tracks across consecutive frames (faster)."""

    static_image_mode: bool = False
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    roi_margin: float = 1.0  # ROI half-size around the previous face, in face sizes (tracking small faces)
    tile_fallback: bool = True
    min_tile_px: int = 192  # smaller tiles give false detections in texture/noise
    min_face_px: float = 24.0  # detections with a smaller landmark extent are rejected as false positives


class FaceLandmarker:
    """Per-frame 478-point face landmarks. Use as a context manager (releases the MediaPipe graph).

    Call ``lm(frame_rgb_uint8 [H, W, 3]) -> (landmarks [478, 3] float32, found bool)``.
    """

    def __init__(self, config: LandmarkerConfig = LandmarkerConfig()):
        self.config = config
        self._mesh = self._new_mesh(config, config.static_image_mode)
        self._still = None  # static-image mesh for ROI / tile retries (created lazily)
        self._prev_box: tuple[int, int, int] | None = None  # (x0, y0, size) of the last ROI that worked

    @staticmethod
    def _new_mesh(config: LandmarkerConfig, static: bool):
        import mediapipe as mp

        return mp.solutions.face_mesh.FaceMesh(static_image_mode=static, max_num_faces=1, refine_landmarks=True,
                                               min_detection_confidence=config.min_detection_confidence,
                                               min_tracking_confidence=config.min_tracking_confidence)

    def __enter__(self) -> "FaceLandmarker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for m in (self._mesh, self._still):
            if m is not None:
                m.close()
        self._mesh = self._still = None

    def _run(self, mesh, image: np.ndarray) -> np.ndarray | None:
        res = mesh.process(image)
        if not res.multi_face_landmarks:
            return None
        h, w = image.shape[:2]
        pts = np.array([(p.x, p.y, p.z) for p in res.multi_face_landmarks[0].landmark], np.float32)
        pts = pts * np.array([w, h, w], np.float32)
        if np.max(np.ptp(pts[:, :2], axis=0)) < self.config.min_face_px:
            return None  # implausibly small "face" (false positive on texture)
        return pts

    def _run_box(self, frame: np.ndarray, box: tuple[int, int, int]) -> np.ndarray | None:
        """Run the static mesh on the square ``(x0, y0, size)`` of `frame` (zero-padded at borders)."""
        if self._still is None:
            self._still = self._new_mesh(self.config, True)
        x0, y0, s = box
        h, w = frame.shape[:2]
        crop = np.zeros((s, s, 3), np.uint8)
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
        if xb <= xa or yb <= ya:
            return None
        crop[ya - y0:yb - y0, xa - x0:xb - x0] = frame[ya:yb, xa:xb]
        pts = self._run(self._still, np.ascontiguousarray(crop))
        if pts is None:
            return None
        return pts + np.array([x0, y0, 0.0], np.float32)

    def _tiles(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """Overlapping squares of side min(h, w) and min(h, w)/2 (if >= min_tile_px) covering the frame."""
        boxes = []
        sides = [s for s in (min(h, w), min(h, w) // 2) if s >= self.config.min_tile_px]
        for side in sides:
            stride = max(side // 2, 1)
            for y0 in range(0, max(h - side, 0) + 1, stride):
                for x0 in range(0, max(w - side, 0) + 1, stride):
                    boxes.append((x0, y0, side))
        return boxes

    @staticmethod
    def _box_around(pts: np.ndarray, margin: float) -> tuple[int, int, int]:
        lo, hi = np.nanmin(pts[:, :2], 0), np.nanmax(pts[:, :2], 0)
        size = float(np.max(hi - lo)) * (1.0 + 2.0 * margin)
        c = (lo + hi) / 2.0
        return int(round(c[0] - size / 2)), int(round(c[1] - size / 2)), max(int(round(size)), 16)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, bool]:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"FaceLandmarker: frame must be uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
        if self._mesh is None:
            raise RuntimeError("FaceLandmarker is closed")
        frame = np.ascontiguousarray(frame)
        pts = None
        if self._prev_box is not None:  # small face tracked from the previous frame's ROI
            pts = self._run_box(frame, self._prev_box)
        if pts is None:
            pts = self._run(self._mesh, frame)
            if pts is not None:
                self._prev_box = None
        if pts is None and self.config.tile_fallback:
            for box in self._tiles(*frame.shape[:2]):
                pts = self._run_box(frame, box)
                if pts is not None:
                    break
        if pts is None:
            self._prev_box = None
            return np.full((NUM_LANDMARKS, 3), np.nan, np.float32), False
        if self._prev_box is not None or not self.config.static_image_mode:
            # remember an ROI when the face is small relative to the frame (full-frame mesh misses it)
            box = self._box_around(pts, self.config.roi_margin)
            self._prev_box = box if box[2] < 0.5 * min(frame.shape[:2]) else None
        return pts, True


def detect_landmarks(frames, config: LandmarkerConfig = LandmarkerConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks for a sequence of frames -> ``([T, 478, 3] float32 (NaN where not found), found [T] bool)``."""
    out, found = [], []
    with FaceLandmarker(config) as lm:
        for frame in frames:
            p, f = lm(frame)
            out.append(p)
            found.append(f)
    return np.stack(out) if out else np.zeros((0, NUM_LANDMARKS, 3), np.float32), np.array(found, bool)
