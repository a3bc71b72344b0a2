"""Grain input pipeline over one or more prepared dataset directories (identities).

Each sample (before batching) is a dict::

    frame          float32 [S, S, 3] in [0, 1]
    mask           float32 [S, S, 2] (head mask, person probability)
    landmarks      float32 [478, 3] (crop pixels)
    audio          float32 [2 * audio_window + 1, Da]  features of frames t - w .. t + w (clamped at the clip ends)
    index          int32   frame index t within its clip
    identity       int32   position of the clip in `dataset_dirs`

Pipeline: all (identity, frame) pairs of the split -> global shuffle by seed (reshuffled every epoch) ->
shard ``[shard_index::shard_count]`` (defaults: ``jax.process_index() / jax.process_count()``) -> load ->
batch (drop remainder) -> `grain.DatasetIterator`, whose ``get_state() / set_state()`` make it resumable
(store the state next to the model checkpoint).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ggtalker_jax.data.dataset import PreparedDataset
from ggtalker_jax.data.errors import DatasetError


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


def load_sample(data: PreparedDataset, identity: int, t: int, radius: int) -> dict[str, np.ndarray]:
    """One training sample (see the module docstring)."""
    return {
        "frame": data.frame(t).astype(np.float32) / 255.0,
        "mask": data.mask(t),
        "landmarks": data.landmarks[t].astype(np.float32),
        "audio": audio_window(data.audio_features, t, radius).astype(np.float32),
        "index": np.int32(t),
        "identity": np.int32(identity),
    }


def make_dataset(dataset_dirs: Sequence[str | os.PathLike] | str | os.PathLike,
                 config: LoaderConfig = LoaderConfig()):
    """Build the grain ``IterDataset`` (iterate it, or call ``iter()`` to get a resumable iterator)."""
    import grain

    if isinstance(dataset_dirs, (str, os.PathLike)):
        dataset_dirs = [dataset_dirs]
    if not dataset_dirs:
        raise ValueError("make_dataset: no dataset directories given")
    datasets = [PreparedDataset(d) for d in dataset_dirs]
    sizes = {d.size for d in datasets}
    dims = {d.audio_features.shape[1] for d in datasets}
    if len(sizes) > 1 or len(dims) > 1:
        raise DatasetError(f"make_dataset: datasets differ in crop size {sizes} or audio feature dim {dims}; "
                           "prepare them with the same --size and features")
    pairs = np.concatenate([np.stack([np.full(len(idx), k), idx], 1)
                            for k, idx in ((k, d.indices(config.split)) for k, d in enumerate(datasets))])
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
    radius = config.audio_window
    ds = ds.map(lambda it: load_sample(datasets[it[0]], it[0], it[1], radius))
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
