"""Re-encodes and edits a watermark has to survive, as functions of frames [T, H, W, 3] uint8.

Used twice: the embedder simulates `Reencode`s to learn which carriers survive them, and
`experiments/bench_watermark.py` applies the same functions (plus crops and brightness) as attacks.
H.264 goes through `ggtalker_jax.media` (libx264, yuv420p) in a temporary directory.
"""
from __future__ import annotations

import dataclasses
import pathlib
import tempfile

import cv2
import numpy as np

from ggtalker_jax import media


@dataclasses.dataclass(frozen=True)
class Reencode:
    """Resize every frame by `scale` (area filter), then H.264 at `crf` and decode."""
    scale: float = 1.0
    crf: int = 28

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return h264(rescale(frames, self.scale), self.crf)


def rescale(frames: np.ndarray, scale: float) -> np.ndarray:
    """[T, H, W, 3] -> [T, round(H * scale), round(W * scale), 3] (area filter down, bicubic up)."""
    if scale == 1.0:
        return frames
    t, h, w, _ = frames.shape
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def h264(frames: np.ndarray, crf: int, fps: float = 25.0) -> np.ndarray:
    """Encode [T, H, W, 3] uint8 as H.264 (CRF `crf`, preset medium) and decode it again.

    Odd sizes come back padded by one row/column (yuv420p); the padding is cut off again here.
    """
    frames = np.asarray(frames)
    with tempfile.TemporaryDirectory(prefix="ggtalker-wm-") as tmp:
        path = pathlib.Path(tmp) / "attack.mp4"
        media.write_mp4(path, frames, fps=fps, crf=crf)
        decoded = np.stack(list(media.read_video(path, fps=None)))
    return decoded[:, :frames.shape[1], :frames.shape[2]]


def corner_crop(frames: np.ndarray, keep: float, corner: str = "top-left") -> np.ndarray:
    """Keep `keep` of each axis, anchored at a corner ("top-left", "bottom-right", ...); even sizes."""
    t, h, w, _ = frames.shape
    ch, cw = int(h * keep) // 2 * 2, int(w * keep) // 2 * 2
    y0 = 0 if corner.startswith("top") else h - ch
    x0 = 0 if corner.endswith("left") else w - cw
    return frames[:, y0:y0 + ch, x0:x0 + cw]


def brightness(frames: np.ndarray, delta: int) -> np.ndarray:
    """Add `delta` luma levels to every channel (clipped to [0, 255])."""
    return np.clip(frames.astype(np.int16) + int(delta), 0, 255).astype(np.uint8)
