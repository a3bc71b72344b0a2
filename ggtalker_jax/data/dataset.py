"""On-disk format of a prepared talking-head clip (written by `ggtalker_jax.data.ingest.prepare`) and its reader.

Layout of a dataset directory (one identity / one clip)::

    meta.json                 see below
    frames/%06d.jpg           T head crops, RGB, size x size, JPEG quality 95
    masks/%06d.png            T masks, size x size x 3 uint8: R = head mask (0/255), G = person
                              probability * 255, B = 0
    landmarks.npy             float32 [T, 478, 3] MediaPipe face mesh in crop pixels (x, y; z scaled like x);
                              frames where the face was lost are linearly interpolated (see landmarks_found)
    landmarks_found.npy       bool [T] True where the face was detected (not interpolated)
    crop_boxes.npy            int64 [T, 3] crop square (x0, y0, side) in source-video pixels
    audio.wav                 16 kHz mono PCM16, cut / padded to exactly T / fps seconds
    audio_features.npy        float32 [T, Da] per-frame audio features (frame t covers [t/fps, (t+1)/fps))
    tracking.npz              (optional, written later by head tracking through prepare's track_fn)

``meta.json`` keys: ``version`` (int, `FORMAT_VERSION`), ``fps``, ``size``, ``num_frames`` (T), ``source``
(input path), ``source_info`` (probe_video fields), ``audio_sample_rate``, ``split`` (``{"train": [0, b],
"test": [b, T]}``: half-open frame ranges, contiguous, train first, about 10:1 by time), ``features``
(``{"kind": "logmel" | "external", "dim": Da, ...}``), ``timings`` (seconds per stage), ``stats``
(``found_ratio``, ``lost_ranges`` [[a, b), ...], ``audio_dbfs``, ...), ``crop`` (crop config).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from ggtalker_jax.data.errors import DatasetError
from ggtalker_jax.data.landmarks import NUM_LANDMARKS

FORMAT_VERSION = 1
META = "meta.json"
FRAMES_DIR = "frames"
MASKS_DIR = "masks"
LANDMARKS = "landmarks.npy"
LANDMARKS_FOUND = "landmarks_found.npy"
CROP_BOXES = "crop_boxes.npy"
AUDIO = "audio.wav"
AUDIO_FEATURES = "audio_features.npy"
TRACKING = "tracking.npz"
MIN_FRAMES = 22  # at least 20 train + 2 test frames with the 10:1 split


def frame_name(i: int) -> str:
    return f"{FRAMES_DIR}/{i:06d}.jpg"


def mask_name(i: int) -> str:
    return f"{MASKS_DIR}/{i:06d}.png"


def split_ranges(num_frames: int, train_parts: int = 10, test_parts: int = 1) -> dict[str, list[int]]:
    """Contiguous time split: train ``[0, b)`` then test ``[b, T)`` with ``b = round(T * 10 / 11)``."""
    if num_frames < MIN_FRAMES:
        raise DatasetError(f"clip has {num_frames} frames; need at least {MIN_FRAMES} for the "
                           f"{train_parts}:{test_parts} train/test split (use a longer video)")
    b = int(round(num_frames * train_parts / (train_parts + test_parts)))
    b = min(max(b, 1), num_frames - 1)
    return {"train": [0, b], "test": [b, num_frames]}


def write_image(path: pathlib.Path, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise OSError(f"could not write {path} (disk full or directory missing?)")


def encode_mask(head: np.ndarray, person: np.ndarray) -> np.ndarray:
    """bool head ``[H, W]`` + person probability ``[H, W]`` -> uint8 RGB ``[H, W, 3]`` (R head, G person)."""
    out = np.zeros(head.shape + (3,), np.uint8)
    out[..., 0] = np.where(head, 255, 0)
    out[..., 1] = np.clip(np.round(np.asarray(person, np.float32) * 255), 0, 255).astype(np.uint8)
    return out


class PreparedDataset:
    """Reader of one prepared directory; validates it on open (raises `DatasetError` naming the problem).

    Attributes: ``meta`` (dict), ``num_frames`` (T), ``size``, ``fps``, ``landmarks [T, 478, 3]``,
    ``landmarks_found [T]``, ``crop_boxes [T, 3]``, ``audio_features [T, Da]``, ``train_range``,
    ``test_range`` ((a, b) half-open).
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = pathlib.Path(directory)
        meta_path = self.dir / META
        if not meta_path.is_file():
            raise DatasetError(f"{self.dir}: no {META}; not a prepared dataset (run `ggtalker prepare --video "
                               f"IN.mp4 --out {self.dir}`)")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{meta_path}: corrupt JSON ({e}); re-run prepare") from e
        if self.meta.get("version") != FORMAT_VERSION:
            raise DatasetError(f"{meta_path}: format version {self.meta.get('version')} != {FORMAT_VERSION}; "
                               "re-run prepare with this version of ggtalker_jax")
        self.num_frames = int(self.meta["num_frames"])
        self.size = int(self.meta["size"])
        self.fps = float(self.meta["fps"])
        t = self.num_frames
        self.landmarks = self._array(LANDMARKS, (t, NUM_LANDMARKS, 3))
        self.landmarks_found = self._array(LANDMARKS_FOUND, (t,)).astype(bool)
        self.crop_boxes = self._array(CROP_BOXES, (t, 3))
        self.audio_features = self._array(AUDIO_FEATURES, (t, None))
        if not np.all(np.isfinite(self.landmarks)) or not np.all(np.isfinite(self.audio_features)):
            raise DatasetError(f"{self.dir}: landmarks or audio features contain NaN/inf; re-run prepare")
        for name in (frame_name(0), frame_name(t - 1), mask_name(0), mask_name(t - 1), AUDIO):
            if not (self.dir / name).is_file():
                raise DatasetError(f"{self.dir}: missing {name} (interrupted prepare?); re-run prepare")
        split = self.meta["split"]
        self.train_range = tuple(split["train"])
        self.test_range = tuple(split["test"])
        if not (0 <= self.train_range[0] < self.train_range[1] <= self.test_range[0] < self.test_range[1] <= t):
            raise DatasetError(f"{meta_path}: invalid split {split} for {t} frames")

    def _array(self, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
        path = self.dir / name
        if not path.is_file():
            raise DatasetError(f"{self.dir}: missing {name}; re-run prepare")
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{path}: unreadable ({e}); re-run prepare") from e
        if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            raise DatasetError(f"{path}: shape {arr.shape}, expected {shape} (None = any)")
        return arr

    def _check_index(self, i: int) -> int:
        if not 0 <= i < self.num_frames:
            raise IndexError(f"{self.dir}: frame index {i} out of range [0, {self.num_frames})")
        return int(i)

    def frame(self, i: int) -> np.ndarray:
        """uint8 RGB ``[size, size, 3]``."""
        import cv2

        path = self.dir / frame_name(self._check_index(i))
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{path}: missing or corrupt image; re-run prepare")
        return img[..., ::-1].copy()

    def mask(self, i: int) -> np.ndarray:
        """float32 ``[size, size, 2]`` in [0, 1]: channel 0 head mask, channel 1 person probability."""
        import cv2

        path = self.dir / mask_name(self._check_index(i))
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{path}: missing or corrupt mask; re-run prepare")
        return img[..., [2, 1]].astype(np.float32) / 255.0

    def audio(self) -> tuple[np.ndarray, int]:
        from ggtalker_jax.audio.io import load_audio

        return load_audio(self.dir / AUDIO, int(self.meta["audio_sample_rate"]))

    def tracking(self) -> dict[str, np.ndarray] | None:
        """Contents of ``tracking.npz`` if head tracking has been run, else None."""
        path = self.dir / TRACKING
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def indices(self, split: str) -> np.ndarray:
        """Frame indices ``[N]`` of ``"train"``, ``"test"`` or ``"all"``."""
        if split == "all":
            return np.arange(self.num_frames)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        a, b = self.train_range if split == "train" else self.test_range
        return np.arange(a, b)
