"""Grain input pipeline over one or more prepared dataset directories (identities): the one loader of
training samples, for the Expression-Visual prior and for adaptation.

Each sample (before batching) is a frame t of one identity. Always::

    frame          float32 [S, S, 3] in [0, 1]        (S = `LoaderConfig.image_size`, default the crop size)
    mask           float32 [S, S, 2]                  head mask with the hair (`PreparedDataset.head_mask`) in
                                                      {0, 1}, person probability
    landmarks      float32 [478, 3]                   MediaPipe landmarks in pixels of the S x S frame
    found          bool    []                         MediaPipe found the face in this frame
    audio          float32 [2 * audio_window + 1, Da] features of frames t - w .. t + w (clamped at the clip ends)
    index          int32   []                         frame index t within its clip
    identity       int32   []                         position of the clip in `dataset_dirs`

With ``with_tracking`` (the dataset must have tracking.npz): the frame's head parameters
``expression53`` [53], ``global_rot`` [3], ``translation`` [3], ``neck_pose`` [3], ``eye_pose`` [6], and
the identity's ``shape`` [S_shape] and intrinsics ``K`` [3, 3] at size S. With ``window`` = W > 0 also an
audio-expression window containing t: ``window_index`` [W] int32 (frame indices, inside the split),
``window_audio`` [W, Da], ``window_expression53`` [W, 53] and ``render_pos`` int32 (t's position in the
window, uniformly random), and the window's context as the A2E sees it at inference (P =
``window_context``): ``window_prev_index`` [P] int32 (the P frames before the window, clamped into the split),
``window_prev_expression53`` [P, 53] and ``window_has_prev`` bool (all P frames lie inside the split). With ``mouth_mask``: ``mouth_mask`` float32 [S, S, 1], the dilated hull of the
lips (from the landmarks). With ``with_reference``: the identity's reference frame (its first training
frame) ``reference_frame`` [S, S, 3] and its head parameters ``reference_expression53``,
``reference_global_rot``, ... (the Identity-Gaussian Generator's input).

Pipeline: all (identity, frame) pairs of the split -> global shuffle by seed (reshuffled every epoch) ->
shard ``[shard_index::shard_count]`` (defaults: ``jax.process_index() / jax.process_count()``) -> load
(frames read from disk one at a time: memory does not grow with the clip) -> batch (drop remainder) ->
`grain.DatasetIterator`, whose ``get_state() / set_state()`` make it resumable (the trainer stores the
state next to the model checkpoint).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ggtalker_jax.constants import LIPS_OUTER_LOWER, LIPS_OUTER_UPPER
from ggtalker_jax.data import dataset as ds_lib
from ggtalker_jax.data.dataset import PreparedDataset
from ggtalker_jax.errors import DatasetError


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 1
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None = repeat forever
    audio_window: int = 4  # frames either side (9 frames at 25 fps = 0.36 s)
    split: str = "train"  # "train" | "test" | "all"
    drop_remainder: bool = True
    num_threads: int = 4  # read threads (grain ReadOptions)
    prefetch_buffer_size: int = 8
    shard_index: int | None = None
    shard_count: int | None = None
    image_size: int | None = None  # frames resized to this (None: the prepared crop size)
    with_tracking: bool = False
    window: int = 0  # audio-expression window around each sample (0: none; needs with_tracking)
    window_context: int = 0  # previous frames given with each window (the A2E's context, `PriorConfig.a2e_context`)
    mouth_mask: bool = False
    mouth_dilation: float = 0.25  # the lip hull grows by this fraction of the mouth width
    with_reference: bool = False  # needs with_tracking
    only_found: bool = False  # drop frames where MediaPipe lost the face (their landmarks are interpolated)


class _FrameIndex:
    """Random-access source of ``(identity, frame)`` pairs (grain needs ``__len__`` / ``__getitem__``)."""

    def __init__(self, pairs: np.ndarray):
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, i: int) -> tuple[int, int]:
        ident, t = self._pairs[i]
        return int(ident), int(t)


def audio_window(features: np.ndarray, t: int, radius: int) -> np.ndarray:
    """Rows ``t - radius .. t + radius`` of ``features [T, Da]`` (indices clamped) -> ``[2r+1, Da]``."""
    idx = np.clip(np.arange(t - radius, t + radius + 1), 0, features.shape[0] - 1)
    return features[idx]


def mouth_mask(landmarks: np.ndarray, size: int, dilation: float = 0.25) -> np.ndarray:
    """float32 [size, size, 1]: the filled outer-lip polygon of MediaPipe `landmarks` [478, 2|3] (pixels),
    grown by `dilation` x the mouth width."""
    import cv2

    ring = np.concatenate([np.asarray(landmarks)[list(LIPS_OUTER_UPPER), :2],
                           np.asarray(landmarks)[list(LIPS_OUTER_LOWER[::-1]), :2]])
    out = np.zeros((size, size), np.uint8)
    cv2.fillPoly(out, [np.round(ring).astype(np.int32)], 1)
    width = float(np.linalg.norm(ring[0] - ring[len(LIPS_OUTER_UPPER) - 1]))
    r = int(round(dilation * width))
    if r > 0:
        out = cv2.dilate(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    return out[..., None].astype(np.float32)


class _Identity:
    """One dataset and what samples of it share (resized views, tracking, intrinsics)."""

    def __init__(self, data: PreparedDataset, config: "LoaderConfig"):
        self.data = data
        self.size = config.image_size or data.size
        self.scale = self.size / data.size
        self.tracking = data.require_tracking() if config.with_tracking else None
        if self.tracking is not None:
            self.expression53 = ds_lib.expression53(self.tracking)
            self.K = self.tracking["K"].copy()
            self.K[:2] *= self.scale

    def frame(self, t: int) -> np.ndarray:
        return ds_lib._resize(self.data.frame(t), self.size).astype(np.float32) / 255.0

    def mask(self, t: int) -> np.ndarray:
        m = ds_lib._resize(self.data.head_mask(t), self.size)
        return np.stack([(m[..., 0] > 0.5).astype(np.float32), m[..., 1]], -1)


def load_sample(ident: _Identity, identity: int, t: int, config: "LoaderConfig",
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """One training sample (see the module docstring)."""
    data = ident.data
    landmarks = (data.landmarks[t] * ident.scale).astype(np.float32)
    out = {
        "frame": ident.frame(t),
        "mask": ident.mask(t),
        "landmarks": landmarks,
        "found": np.bool_(data.landmarks_found[t]),
        "audio": audio_window(data.audio_features, t, config.audio_window).astype(np.float32),
        "index": np.int32(t),
        "identity": np.int32(identity),
    }
    if config.mouth_mask:
        out["mouth_mask"] = mouth_mask(landmarks, ident.size, config.mouth_dilation)
    if ident.tracking is None:
        return out
    out.update(ds_lib.frame_params(ident.tracking, t))
    out["shape"] = ident.tracking["shape"]
    out["K"] = ident.K.astype(np.float32)
    if config.window:
        a, b = _split_range(data, config.split)
        w = min(config.window, b - a)
        pos = int(rng.integers(0, w)) if rng is not None else w // 2
        start = int(np.clip(t - pos, a, b - w))
        idx = np.arange(start, start + w)
        out["window_index"] = idx.astype(np.int32)
        out["window_audio"] = np.asarray(data.audio_features[idx], np.float32)
        out["window_expression53"] = ident.expression53[idx]
        out["render_pos"] = np.int32(t - start)
        p = config.window_context
        prev = np.clip(np.arange(start - p, start), a, b - 1)
        out["window_prev_index"] = prev.astype(np.int32)
        out["window_prev_expression53"] = ident.expression53[prev]
        out["window_has_prev"] = np.bool_(start - p >= a)
    if config.with_reference:
        ref = int(data.train_range[0])
        out["reference_frame"] = ident.frame(ref)
        out.update({f"reference_{k}": v for k, v in ds_lib.frame_params(ident.tracking, ref).items()})
    return out


def _split_range(data: PreparedDataset, split: str) -> tuple[int, int]:
    if split == "all":
        return 0, data.num_frames
    return tuple(data.train_range if split == "train" else data.test_range)


def make_dataset(dataset_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
                 config: LoaderConfig = LoaderConfig()):
    """Build the grain ``IterDataset`` (iterate it, or call ``iter()`` to get a resumable iterator)."""
    import grain

    if isinstance(dataset_dirs, (str, os.PathLike)):
        dataset_dirs = [dataset_dirs]
    if not dataset_dirs:
        raise ValueError("make_dataset: no dataset directories given")
    if (config.window or config.with_reference) and not config.with_tracking:
        raise ValueError("make_dataset: window / with_reference need with_tracking=True")
    datasets = [PreparedDataset(d) for d in dataset_dirs]
    sizes = {d.size for d in datasets}
    dims = {d.audio_features.shape[1] for d in datasets}
    if (config.image_size is None and len(sizes) > 1) or len(dims) > 1:
        raise DatasetError(f"make_dataset: datasets differ in crop size {sizes} or audio feature dim {dims}; "
                           "prepare them with the same --size and features (or give LoaderConfig.image_size)")
    idents = [_Identity(d, config) for d in datasets]

    def frames_of(d: PreparedDataset) -> np.ndarray:
        idx = d.indices(config.split)
        return idx[d.landmarks_found[idx]] if config.only_found else idx

    pairs = np.concatenate([np.stack([np.full(len(idx), k), idx], 1)
                            for k, idx in ((k, frames_of(d)) for k, d in enumerate(datasets))])
    if config.shard_index is None or config.shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    else:
        shard_index, shard_count = config.shard_index, config.shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"make_dataset: need 0 <= shard_index < shard_count, got {shard_index}/{shard_count}")
    per_shard = len(pairs) // shard_count
    if per_shard < config.batch_size:
        raise DatasetError(f"make_dataset: {len(pairs)} {config.split} frames over {shard_count} shards cannot fill "
                           f"a batch of {config.batch_size}")
    ds = grain.MapDataset.source(_FrameIndex(pairs))
    if config.shuffle:
        ds = ds.shuffle(seed=config.seed)
    ds = ds.repeat(config.num_epochs)
    # equal-length shards: every host runs the same number of steps
    ds = ds[shard_index::shard_count] if config.num_epochs is None else \
        ds[shard_index:per_shard * shard_count * config.num_epochs:shard_count]
    ds = ds.random_map(lambda it, rng: load_sample(idents[it[0]], it[0], it[1], config, rng), seed=config.seed)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=config.num_threads,
                                                prefetch_buffer_size=config.prefetch_buffer_size))


def make_loader(dataset_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
                config: LoaderConfig = LoaderConfig()) -> Any:
    """Resumable iterator of batches (dicts of arrays with a leading batch axis ``[B, ...]``).

    ``it.get_state()`` returns a small dict; ``it.set_state(state)`` on a fresh iterator built with the same
    directories and config continues exactly where the saved one was.
    """
    return iter(make_dataset(dataset_dirs, config))
