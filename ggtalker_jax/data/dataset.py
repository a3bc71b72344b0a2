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
    tracking.npz              head tracking (see below; `prepare` writes it unless tracking is turned off)

``meta.json`` keys: ``version`` (int, `FORMAT_VERSION`), ``fps``, ``size``, ``num_frames`` (T), ``source``
(input path), ``source_info`` (probe_video fields), ``audio_sample_rate``, ``split`` (``{"train": [0, b],
"test": [b, T]}``: half-open frame ranges, contiguous, train first, about 10:1 by time), ``features``
(``{"kind": "logmel" | "external", "dim": Da, ...}``), ``timings`` (seconds per stage), ``stats``
(``found_ratio``, ``lost_ranges`` [[a, b), ...], ``audio_dbfs``, ...), ``crop`` (crop config).

``tracking.npz`` (the head model fitted to the landmarks, `ggtalker_jax.data.track`), T frames:

    shape               float32 [S]        head-model shape coefficients, shared by the clip
    expression          float32 [T, 50]    expression coefficients
    jaw_pose            float32 [T, 3]     jaw rotation (axis-angle); expression53 = [expression | jaw_pose]
    neck_pose           float32 [T, 3]     neck rotation (zeros for head models without a neck joint)
    eye_pose            float32 [T, 6]     left then right eyeball rotation (axis-angle)
    global_rot          float32 [T, 3]     head rotation (axis-angle) in head space
    translation         float32 [T, 3]     head position in metres, head space (camera at the origin
                                           looking down -z, y up; `render.camera.head_space_viewmat`)
    K                   float32 [3, 3]     pinhole intrinsics of the crop at ``size`` pixels
    landmark_error_px   float32 [T]        mean reprojection error of the fitted landmarks (pixels)
    head_model          str     []         the head model fitted: "open" or the model file's path
    head_model_record   str     []         JSON: which head model exactly (files + sha256, topology;
                                           `ggtalker_jax.head.record`); adapt / render / eval check it

`PreparedDataset` is the only reader of this format; `SubjectView` is one dataset seen at an avatar's
image size (frames read lazily, one at a time, never the whole clip in memory).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np

from ggtalker_jax.audio.features import FeatureSpec
from ggtalker_jax.constants import EXPR_DIM, NUM_EXPRESSION, NUM_LANDMARKS
from ggtalker_jax.errors import DatasetError

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
# tracking.npz arrays with one row per frame, and their widths (see the module docstring).
TRACK_PER_FRAME = {"expression": NUM_EXPRESSION, "jaw_pose": 3, "neck_pose": 3, "eye_pose": 6, "global_rot": 3,
                   "translation": 3}
# The per-frame head pose besides the 53 expression numbers, as the avatar takes it.
POSE_KEYS = ("global_rot", "translation", "neck_pose", "eye_pose")
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
        for name, arr in ((LANDMARKS, self.landmarks), (AUDIO_FEATURES, self.audio_features)):
            if not np.all(np.isfinite(arr)):
                raise DatasetError(f"{self.dir / name} contains NaN/inf values; re-run `ggtalker prepare`")
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
        """float32 ``[size, size, 2]`` in [0, 1]: channel 0 head mask, channel 1 person probability, as
        stored (the head mask is the landmark hull; `head_mask` adds the hair)."""
        import cv2

        path = self.dir / mask_name(self._check_index(i))
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise DatasetError(f"{path}: missing or corrupt mask; re-run prepare")
        return img[..., [2, 1]].astype(np.float32) / 255.0

    def head_mask(self, i: int, mask: np.ndarray | None = None) -> np.ndarray:
        """float32 ``[size, size, 2]``: `mask(i)` (or the given one) with channel 0 the head including the
        hair: the stored hull united with `masks.hair_region` of the frame's landmarks and person mask."""
        from ggtalker_jax.data.masks import head_with_hair

        m = self.mask(i) if mask is None else mask
        head = head_with_hair(m[..., 0] > 0.5, self.landmarks[i], m[..., 1])
        return np.stack([head.astype(np.float32), m[..., 1]], -1)

    def audio(self) -> tuple[np.ndarray, int]:
        from ggtalker_jax.audio.io import load_audio

        return load_audio(self.dir / AUDIO, int(self.meta["audio_sample_rate"]))

    def tracking(self) -> dict[str, np.ndarray] | None:
        """Contents of ``tracking.npz`` (validated against the schema in the module docstring) if head
        tracking has been run, else None. Raises `DatasetError` naming the file when it is corrupt."""
        path = self.dir / TRACKING
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001  (BadZipFile, EOFError, ValueError, OSError ...)
            raise DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}); re-run `ggtalker prepare` "
                               "(or delete the file and rerun tracking)") from e
        t = self.num_frames
        missing = [k for k in (*TRACK_PER_FRAME, "shape", "K") if k not in out]
        if missing:
            raise DatasetError(f"{path}: missing arrays {missing} (has {sorted(out)}); re-run `ggtalker prepare`")
        for k, width in TRACK_PER_FRAME.items():
            if out[k].shape != (t, width):
                raise DatasetError(f"{path}: {k} has shape {out[k].shape}, expected ({t}, {width}) for the "
                                   f"{t} frames of {self.dir}; re-run `ggtalker prepare`")
        if out["K"].shape != (3, 3) or out["shape"].ndim != 1:
            raise DatasetError(f"{path}: K must be [3, 3] and shape [S], got {out['K'].shape} and "
                               f"{out['shape'].shape}; re-run `ggtalker prepare`")
        for k in (*TRACK_PER_FRAME, "shape", "K"):
            out[k] = np.asarray(out[k], np.float32)
            if not np.all(np.isfinite(out[k])):
                raise DatasetError(f"{path}: {k} contains NaN/inf; re-run `ggtalker prepare`")
        out["head_model"] = str(out["head_model"]) if "head_model" in out else "open"
        return out

    def require_tracking(self) -> dict[str, np.ndarray]:
        """`tracking()`, raising `DatasetError` with the fix when the dataset has none."""
        tracking = self.tracking()
        if tracking is None:
            raise DatasetError(f"{self.dir}: no {TRACKING}; the subject was prepared without head tracking. "
                               f"Re-run `ggtalker prepare --video VIDEO --out {self.dir} --overwrite` "
                               "(tracking is on by default)")
        return tracking

    @property
    def feature_spec(self) -> FeatureSpec:
        """What `audio_features.npy` holds, as a `FeatureSpec` (meta.json "features")."""
        return FeatureSpec.from_dict(self.meta.get("features"), int(self.audio_features.shape[1]))

    @property
    def feature_info(self) -> dict[str, Any]:
        """What `audio_features.npy` holds: ``{"kind": "logmel" | "external", "dim": Da, ...}`` (one row per
        video frame, i.e. at `fps` rows per second)."""
        info = dict(self.meta.get("features") or {"kind": "logmel"})
        info["dim"] = int(self.audio_features.shape[1])
        return info

    def indices(self, split: str) -> np.ndarray:
        """Frame indices ``[N]`` of ``"train"``, ``"test"`` or ``"all"``."""
        if split == "all":
            return np.arange(self.num_frames)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        a, b = self.train_range if split == "train" else self.test_range
        return np.arange(a, b)


def expression53(tracking: dict) -> np.ndarray:
    """[T, 53] = [expression (50) | jaw_pose (3)] of a tracking dict."""
    out = np.concatenate([tracking["expression"], tracking["jaw_pose"]], axis=-1).astype(np.float32)
    assert out.shape[-1] == EXPR_DIM
    return out


def frame_params(tracking: dict, index, expression53_rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The per-frame head parameters the avatar renders from, for frame indices `index` ([B] ints):
    ``{"expression53": [B, 53], "global_rot": [B, 3], "translation": [B, 3], "neck_pose": [B, 3],
    "eye_pose": [B, 6]}``. `expression53_rows` [B, 53] replaces the tracked expressions (e.g. the A2E's)."""
    index = np.asarray(index)
    expr = expression53(tracking)[index] if expression53_rows is None else np.asarray(expression53_rows, np.float32)
    return {"expression53": expr, **{k: np.asarray(tracking[k][index], np.float32) for k in POSE_KEYS}}


class SubjectView:
    """One prepared dataset seen at an avatar's image size: what adaptation, rendering and evaluation read.

    Frames, masks and landmarks are read from disk on demand (resized to `image_size`, intrinsics scaled
    to match), so memory does not grow with the clip's length. Attributes: ``dataset`` (the
    `PreparedDataset`), ``image_size`` S, ``tracking`` (validated dict), ``expression53`` [T, 53],
    ``audio`` [T, Da], ``K`` [3, 3] at size S, ``split`` (a, b, c): train frames [a, b), test frames
    [b, c), ``fps``, ``landmarks_found`` [T], ``reference_index`` (the first training frame: the
    Identity-Gaussian Generator's reference image).
    """

    def __init__(self, directory: str | os.PathLike, image_size: int):
        self.dataset = PreparedDataset(directory)
        self.root = str(self.dataset.dir)
        self.image_size = int(image_size)
        self.tracking = self.dataset.require_tracking()
        t = self.dataset.num_frames
        self.expression53 = expression53(self.tracking)
        self.audio = np.asarray(self.dataset.audio_features, np.float32)
        self.K = self.tracking["K"].copy()
        self.K[:2] *= self.image_size / self.dataset.size
        self.split = (int(self.dataset.train_range[0]), int(self.dataset.train_range[1]),
                      int(self.dataset.test_range[1]))
        self.fps = self.dataset.fps
        self.landmarks_found = np.asarray(self.dataset.landmarks_found, bool)
        self.reference_index = self.split[0]
        self.num_frames = t

    def frame(self, i: int) -> np.ndarray:
        """float32 [S, S, 3] in [0, 1]."""
        return _resize(self.dataset.frame(i), self.image_size).astype(np.float32) / 255.0

    def head_mask(self, i: int) -> np.ndarray:
        """float32 [S, S, 1] in {0, 1}: the head with its hair (`PreparedDataset.head_mask`)."""
        m = _resize(self.dataset.head_mask(i)[..., :1], self.image_size)
        return (m.reshape(self.image_size, self.image_size, 1) > 0.5).astype(np.float32)

    def person_mask(self, i: int) -> np.ndarray:
        """float32 [S, S, 1] in [0, 1]: the person segmenter's probability."""
        m = _resize(self.dataset.mask(i)[..., 1:2], self.image_size)
        return m.reshape(self.image_size, self.image_size, 1).astype(np.float32)

    def landmarks(self, i: int) -> np.ndarray:
        """float32 [478, 3] MediaPipe landmarks in pixels of the S x S view."""
        return (self.dataset.landmarks[i] * (self.image_size / self.dataset.size)).astype(np.float32)

    def frames(self, indices) -> np.ndarray:
        """float32 [B, S, S, 3] for frame indices [B]."""
        return np.stack([self.frame(int(i)) for i in indices])

    def head_masks(self, indices) -> np.ndarray:
        """float32 [B, S, S, 1] for frame indices [B]."""
        return np.stack([self.head_mask(int(i)) for i in indices])

    def frame_params(self, index, expression53_rows=None) -> dict[str, np.ndarray]:
        """`frame_params` of this subject's tracking."""
        return frame_params(self.tracking, index, expression53_rows)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _default_feature_record(dim: int) -> dict:
    if dim % 80 == 0:
        return FeatureSpec.logmel(mels_per_frame=dim // 80).to_dict()
    return FeatureSpec.external(dim, 50.0, "synthetic").to_dict()


def write_synthetic_dataset(out_dir: str | os.PathLike, audio_features: np.ndarray, fps: float, split: dict,
                            tracking: dict, size: int = 16, features: dict | None = None) -> pathlib.Path:
    """Writes a complete, valid prepared dataset whose frames are flat grey `size` px images, for tests and
    smoke runs of what reads audio features and tracking (the A2E prior). audio_features [T, Da]; tracking:
    any arrays of `tracking.npz` (missing ones are zeros; ``K`` a centred pinhole); features: the meta.json
    "features" record (default: log-mel of the array's width, or external when that is no log-mel width)."""
    out = pathlib.Path(out_dir)
    t = int(audio_features.shape[0])
    (out / FRAMES_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASKS_DIR).mkdir(exist_ok=True)
    grey = np.full((size, size, 3), 128, np.uint8)
    mask = encode_mask(np.zeros((size, size), bool), np.zeros((size, size)))
    for i in range(t):
        write_image(out / frame_name(i), grey)
        write_image(out / mask_name(i), mask)
    np.save(out / LANDMARKS, np.zeros((t, NUM_LANDMARKS, 3), np.float32))
    np.save(out / LANDMARKS_FOUND, np.ones(t, bool))
    np.save(out / CROP_BOXES, np.tile(np.array([0, 0, size], np.int64), (t, 1)))
    np.save(out / AUDIO_FEATURES, np.asarray(audio_features, np.float32))
    from ggtalker_jax.audio.io import write_wav
    write_wav(out / AUDIO, np.zeros(int(round(t / fps * 16000)), np.float32), 16000)
    arrays = {k: np.zeros((t, w), np.float32) for k, w in TRACK_PER_FRAME.items()}
    arrays.update(shape=np.zeros(0, np.float32), landmark_error_px=np.zeros(t, np.float32),
                  K=np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float32))
    arrays.update({k: np.asarray(v, np.float32) for k, v in tracking.items()})
    np.savez(out / TRACKING, head_model=np.array("open"), **arrays)
    meta = {"version": FORMAT_VERSION, "fps": float(fps), "size": size, "num_frames": t, "audio_sample_rate": 16000,
            "split": split, "features": features or _default_feature_record(int(audio_features.shape[1])),
            "synthetic": True}
    (out / META).write_text(json.dumps(meta, indent=1))
    return out
