"""Prepared-dataset reader validation and the grain loader (tiny synthetic datasets written in tmp_path)."""
import json

import numpy as np
import pytest

from ggtalker_jax.data import dataset as ds
from ggtalker_jax.data import loader
from ggtalker_jax.errors import DatasetError


def _write_fake(d, t=22, size=16, da=6, ident=0):
    """A valid dataset whose frame i is flat grey level 7*i (+ident) and feature row i is i."""
    (d / ds.FRAMES_DIR).mkdir(parents=True)
    (d / ds.MASKS_DIR).mkdir()
    for i in range(t):
        ds.write_image(d / ds.frame_name(i), np.full((size, size, 3), 7 * i + ident, np.uint8))
        head = np.zeros((size, size), bool)
        head[: i % size] = True
        ds.write_image(d / ds.mask_name(i), ds.encode_mask(head, np.full((size, size), 0.5)))
    lms = np.zeros((t, 478, 3), np.float32) + np.arange(t, dtype=np.float32)[:, None, None]
    np.save(d / ds.LANDMARKS, lms)
    np.save(d / ds.LANDMARKS_FOUND, np.ones(t, bool))
    np.save(d / ds.CROP_BOXES, np.zeros((t, 3), np.int64))
    np.save(d / ds.AUDIO_FEATURES, np.repeat(np.arange(t, dtype=np.float32)[:, None], da, 1))
    from ggtalker_jax.audio.io import write_wav

    write_wav(d / ds.AUDIO, np.zeros(int(t / 25 * 16000), np.float32), 16000)
    meta = {"version": ds.FORMAT_VERSION, "fps": 25.0, "size": size, "num_frames": t, "audio_sample_rate": 16000,
            "split": ds.split_ranges(t), "features": {"kind": "logmel", "dim": da}}
    (d / ds.META).write_text(json.dumps(meta))
    return d


def test_split_ranges():
    assert ds.split_ranges(22) == {"train": [0, 20], "test": [20, 22]}
    assert ds.split_ranges(110) == {"train": [0, 100], "test": [100, 110]}
    with pytest.raises(DatasetError, match="at least 22"):
        ds.split_ranges(21)


def test_reader_roundtrip_and_validation(tmp_path):
    d = _write_fake(tmp_path / "a")
    data = ds.PreparedDataset(d)
    assert data.num_frames == 22 and data.size == 16
    assert np.abs(data.frame(7).astype(int) - 49).max() <= 1  # JPEG q95 of a flat image
    m = data.mask(5)
    assert m.shape == (16, 16, 2) and m[:5, :, 0].min() == 1 and m[5:, :, 0].max() == 0
    np.testing.assert_allclose(m[..., 1], 128 / 255)
    np.testing.assert_array_equal(data.indices("test"), [20, 21])
    assert data.tracking() is None
    with pytest.raises(IndexError):
        data.frame(22)
    (d / ds.LANDMARKS).unlink()
    with pytest.raises(DatasetError, match="missing landmarks.npy"):
        ds.PreparedDataset(d)
    with pytest.raises(DatasetError, match="no meta.json"):
        ds.PreparedDataset(tmp_path)
    d2 = _write_fake(tmp_path / "b")
    np.save(d2 / ds.AUDIO_FEATURES, np.zeros((21, 6), np.float32))
    with pytest.raises(DatasetError, match=r"shape \(21, 6\)"):
        ds.PreparedDataset(d2)


def test_loader_batches_shuffle_shards_and_resume(tmp_path):
    dirs = [_write_fake(tmp_path / "a", ident=0), _write_fake(tmp_path / "b", t=33, ident=3)]
    cfg = loader.LoaderConfig(batch_size=4, seed=3, num_threads=1, num_epochs=1, audio_window=2,
                              shard_index=0, shard_count=1)
    batches = list(loader.make_dataset(dirs, cfg))
    n_train = 20 + 30
    assert len(batches) == n_train // 4
    b = batches[0]
    assert b["frame"].shape == (4, 16, 16, 3) and b["audio"].shape == (4, 5, 6) and b["landmarks"].shape == (4, 478, 3)
    seen = [(int(i), int(t)) for bb in batches for i, t in zip(bb["identity"], bb["index"])]
    assert len(set(seen)) == len(seen) and all(t < (20 if i == 0 else 30) for i, t in seen)  # train only
    for bb in batches:  # content matches the index
        for k in range(4):
            t, ident = int(bb["index"][k]), int(bb["identity"][k])
            assert abs(bb["frame"][k].mean() * 255 - (7 * t + 3 * ident)) < 1.5
            np.testing.assert_array_equal(bb["audio"][k, :, 0], np.clip(np.arange(t - 2, t + 3), 0, None))
    assert [s[1] for s in seen[:8]] != sorted(s[1] for s in seen[:8])  # shuffled
    # shards partition the samples
    shards = [{(int(i), int(t)) for bb in loader.make_dataset(dirs, loader.LoaderConfig(
        batch_size=1, seed=3, num_threads=1, num_epochs=1, shard_index=k, shard_count=2)) for i, t in
        zip(bb["identity"], bb["index"])} for k in range(2)]
    assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 25
    # resume from a saved state (infinite epochs; the second epoch reshuffles)
    cfg = loader.LoaderConfig(batch_size=5, seed=1, num_threads=1, shard_index=0, shard_count=1)
    it = loader.make_loader(dirs, cfg)
    for _ in range(3):
        next(it)
    state = it.get_state()
    after = [next(it)["index"].tolist() for _ in range(12)]
    it2 = loader.make_loader(dirs, cfg)
    it2.set_state(state)
    assert [next(it2)["index"].tolist() for _ in range(12)] == after
    it3 = loader.make_loader(dirs, cfg)
    order = [(int(i), int(t)) for _ in range(20) for b in [next(it3)] for i, t in zip(b["identity"], b["index"])]
    assert sorted(order[:50]) == sorted(order[50:])  # each epoch is a permutation of the train set
    assert order[:50] != order[50:]  # ...reshuffled every epoch


def test_loader_rejects_mismatched_datasets(tmp_path):
    dirs = [_write_fake(tmp_path / "a"), _write_fake(tmp_path / "b", size=8)]
    with pytest.raises(DatasetError, match="crop size"):
        loader.make_dataset(dirs, loader.LoaderConfig(shard_index=0, shard_count=1))
