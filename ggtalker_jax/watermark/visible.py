"""Visible "AI-generated" overlay: text on a semi-transparent box in a frame corner."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclasses.dataclass(frozen=True)
class VisibleMarkConfig:
    text: str = "AI-generated"
    position: str = "bottom-right"
    opacity: float = 0.55        # of the dark box behind the text
    text_height: float = 0.045   # text height as a fraction of the frame height
    margin: float = 0.02         # distance from the frame edge, fraction of the frame height

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if not 0.0 <= self.opacity <= 1.0:
            raise ValueError(f"opacity must be in [0, 1], got {self.opacity}")
        if not self.text.isascii() or not self.text.strip():
            raise ValueError(f"text must be non-empty ASCII (cv2.putText fonts), got {self.text!r}")


def mark_box(height: int, width: int, config: VisibleMarkConfig) -> tuple[int, int, int, int, float, int]:
    """(x0, y0, x1, y1, font_scale, thickness) of the overlay box for an [height, width] frame."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    target = max(6.0, config.text_height * height)
    (_, base_h), _ = cv2.getTextSize(config.text, font, 1.0, 1)
    scale = target / base_h
    thickness = max(1, int(round(scale * 1.5)))
    (tw, th), baseline = cv2.getTextSize(config.text, font, scale, thickness)
    pad = max(2, int(0.3 * th))
    bw, bh = min(width, tw + 2 * pad), min(height, th + baseline + 2 * pad)
    m = int(config.margin * height)
    x0 = m if config.position.endswith("left") else width - m - bw
    y0 = m if config.position.startswith("top") else height - m - bh
    x0, y0 = max(0, x0), max(0, y0)
    return x0, y0, x0 + bw, y0 + bh, scale, thickness


def draw_visible_mark(frames: np.ndarray, config: VisibleMarkConfig = VisibleMarkConfig()) -> np.ndarray:
    """[T, H, W, 3] uint8 -> same shape with the overlay drawn on every frame."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    x0, y0, x1, y1, scale, thickness = mark_box(h, w, config)
    (_, th), baseline = cv2.getTextSize(config.text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    # The overlay is the same on every frame: render box alpha and text once, blend all frames.
    text_layer = np.zeros((h, w), dtype=np.uint8)
    origin = (x0 + max(2, int(0.3 * th)), y1 - max(2, int(0.3 * th)) - baseline)
    cv2.putText(text_layer, config.text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    alpha_box = np.zeros((h, w), dtype=np.float32)
    alpha_box[y0:y1, x0:x1] = config.opacity
    out = frames.astype(np.float32) * (1.0 - alpha_box[None, ..., None])
    text_alpha = text_layer.astype(np.float32)[None, ..., None] / 255.0
    out = out * (1.0 - text_alpha) + 255.0 * text_alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
