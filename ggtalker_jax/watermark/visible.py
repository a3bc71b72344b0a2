"""Visible "AI-generated" overlay: text on a semi-transparent box in a frame corner, and the check that a
frame really shows the overlay a signed record claims (`overlay_score`)."""
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
        if not 0.0 < self.text_height <= 0.5 or not 0.0 <= self.margin <= 0.5:
            raise ValueError(f"text_height must be in (0, 0.5] and margin in [0, 0.5], got "
                             f"{self.text_height}, {self.margin}")

    def to_record(self) -> tuple[tuple[str, object], ...]:
        """(name, value) pairs for `Payload.visible_overlay`."""
        return tuple(sorted(dataclasses.asdict(self).items()))

    @classmethod
    def from_record(cls, pairs) -> "VisibleMarkConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(pairs).items() if k in names})


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


def overlay_layers(height: int, width: int, config: VisibleMarkConfig) -> tuple[np.ndarray, np.ndarray]:
    """(box alpha [H, W] float32 = opacity inside the box, text alpha [H, W] float32 in [0, 1])."""
    x0, y0, x1, y1, scale, thickness = mark_box(height, width, config)
    (_, th), baseline = cv2.getTextSize(config.text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    text_layer = np.zeros((height, width), dtype=np.uint8)
    origin = (x0 + max(2, int(0.3 * th)), y1 - max(2, int(0.3 * th)) - baseline)
    cv2.putText(text_layer, config.text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, cv2.LINE_AA)
    alpha_box = np.zeros((height, width), dtype=np.float32)
    alpha_box[y0:y1, x0:x1] = config.opacity
    return alpha_box, text_layer.astype(np.float32) / 255.0


def draw_visible_mark(frames: np.ndarray, config: VisibleMarkConfig = VisibleMarkConfig()) -> np.ndarray:
    """[T, H, W, 3] uint8 -> same shape with the overlay drawn on every frame."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    # The overlay is the same on every frame: render box alpha and text once, blend all frames.
    alpha_box, text_alpha = overlay_layers(h, w, config)
    out = frames.astype(np.float32) * (1.0 - alpha_box[None, ..., None])
    text_alpha = text_alpha[None, ..., None]
    out = out * (1.0 - text_alpha) + 255.0 * text_alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _best_correlation(observed: np.ndarray, template: np.ndarray, region: tuple[int, int, int, int],
                      max_shift: int) -> float:
    """Best normalised cross-correlation of `observed` with `template` [same shape] over `region`
    (y0, y1, x0, x1) shifted by up to `max_shift` pixels."""
    y0, y1, x0, x1 = region
    t = template[y0:y1, x0:x1].astype(np.float32)
    t = t - t.mean()
    best = -1.0
    h, w = observed.shape
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if y0 + dy < 0 or x0 + dx < 0 or y1 + dy > h or x1 + dx > w:
                continue
            patch = observed[y0 + dy:y1 + dy, x0 + dx:x1 + dx].astype(np.float32)
            patch = patch - patch.mean()
            denom = np.sqrt(np.sum(patch ** 2) * np.sum(t ** 2))
            if denom > 1e-6:
                best = max(best, float(np.sum(patch * t) / denom))
    return best


def overlay_score(median_luma: np.ndarray, text_alpha: np.ndarray, box_alpha: np.ndarray | None = None,
                  max_shift: int = 2) -> float:
    """How much observed luma [h, w] looks like the expected overlay (text alpha and box alpha [h, w]
    mapped onto the observed frame): the best normalised cross-correlation, over shifts of up to
    `max_shift` pixels, with (a) the text alone inside its bounding box and (b) the whole overlay (box
    darkening + text over a mid-grey host) inside the box plus a margin. Measured on the sample clips:
    <= 0.25 without the overlay, >= 0.5 with it, also after CRF 28 or 0.5x + CRF 23. NaN when the
    expected text is too small to check (< 4 pixels)."""
    ys, xs = np.nonzero(text_alpha > 0.2)
    if ys.size < 4:
        return float("nan")
    h, w = text_alpha.shape
    pad = max_shift + 2
    text_region = (max(0, ys.min() - pad), min(h, ys.max() + 1 + pad), max(0, xs.min() - pad), min(w, xs.max() + 1 + pad))
    score = _best_correlation(median_luma, cv2.GaussianBlur(text_alpha.astype(np.float32), (0, 0), 0.7),
                              text_region, max_shift)
    if box_alpha is not None and np.any(box_alpha > 0.01):
        bys, bxs = np.nonzero(box_alpha > 0.01)
        margin = max(2, int(0.3 * (bys.max() - bys.min() + 1))) + max_shift
        region = (max(0, bys.min() - margin), min(h, bys.max() + 1 + margin),
                  max(0, bxs.min() - margin), min(w, bxs.max() + 1 + margin))
        expected = (1.0 - box_alpha) * (1.0 - text_alpha) * 128.0 + text_alpha * 255.0
        score = max(score, _best_correlation(median_luma, expected, region, max_shift))
    return score
