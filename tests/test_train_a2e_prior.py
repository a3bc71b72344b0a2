"""A2E prior: the reader, the loss learning the synthetic audio->expression map, sampling, export."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.errors import DatasetError
from ggtalker_jax.models import diffusion, get_config
from ggtalker_jax.train import a2e_prior, trainer

MC = get_config("small").a2e


@pytest.fixture(scope="module")
def subjects(tmp_path_factory):
    root = tmp_path_factory.mktemp("a2e")
    return [a2e_prior.make_synthetic_prepared_dir(str(root / f"s{i}"), num_frames=160, identity=i, seed=i)
            for i in range(2)]


def test_reader_and_windows(subjects):
    clip = a2e_prior.load_prepared(subjects[0])
    assert clip.audio.shape == (160, 320) and clip.expression.shape == (160, 53)
    assert clip.split == {"train": (0, 128), "test": (128, 160)}
    rows = a2e_prior.window_index([clip], "train", window=16, prev=4)
    assert rows[:, 1].min() == 4 and rows[:, 1].max() == 128 - 16
    ac = a2e_prior.A2ETrainConfig(window=16, prev=4, batch_size=4)
    it = a2e_prior.make_train_iterator([a2e_prior.load_prepared(s) for s in subjects], ac, seed=0)
    b = next(it)
    assert b["audio"].shape == (4, 16, 320) and b["expr"].shape == (4, 16, 53)
    assert b["prev_expr"].shape == (4, 4, 53) and set(b["style_id"].tolist()) <= {1, 2}
    # data position round-trips: a fresh iterator set to the saved state yields the same next batch
    state = it.get_state()
    nxt = next(it)
    it2 = a2e_prior.make_train_iterator([a2e_prior.load_prepared(s) for s in subjects], ac, seed=0)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["expr"], nxt["expr"])
    # process sharding: two processes see disjoint windows
    w0 = a2e_prior.make_train_iterator([clip], ac, 0, process_index=0, process_count=2)
    w1 = a2e_prior.make_train_iterator([clip], ac, 0, process_index=1, process_count=2)
    a0, a1 = next(w0)["audio"], next(w1)["audio"]
    assert a0.shape[0] == 2 and not np.array_equal(a0, a1)


def test_reader_errors_name_the_file(tmp_path, subjects):
    with pytest.raises(DatasetError, match="meta.json"):
        a2e_prior.load_prepared(str(tmp_path))
    bad = a2e_prior.make_synthetic_prepared_dir(str(tmp_path / "bad"), num_frames=40)
    audio = np.load(os.path.join(bad, "audio_features.npy"))
    audio[3, 5] = np.nan
    np.save(os.path.join(bad, "audio_features.npy"), audio)
    with pytest.raises(DatasetError, match="audio_features.npy contains NaN"):
        a2e_prior.load_prepared(bad)


def _eval_loss(params, batch, loss_fn):
    keys = jax.random.split(jax.random.PRNGKey(123), 8)
    return float(np.mean([loss_fn(params, batch, k)[0] for k in keys]))


def test_training_reduces_the_loss_on_synthetic_data(tmp_path, subjects):
    ac = a2e_prior.A2ETrainConfig(window=16, prev=4, batch_size=8, sample_steps=10)
    tc = trainer.TrainConfig(num_steps=100, learning_rate=3e-3, warmup_steps=10, checkpoint_every=100,
                             sample_every=100, log_every=20)
    params = a2e_prior.train_a2e_prior(subjects, str(tmp_path / "w"), MC, tc, ac)
    # held-out ("test" split) windows, fixed noise draws
    clips = [a2e_prior.load_prepared(s) for s in subjects]
    s = 132
    batch = {"audio": jnp.stack([c.audio[s:s + 16] for c in clips]),
             "expr": jnp.stack([c.expression[s:s + 16] for c in clips]),
             "prev_expr": jnp.stack([c.expression[s - 4:s] for c in clips]),
             "style_id": jnp.array([1, 2], jnp.int32)}
    loss_fn = jax.jit(a2e_prior.make_loss_fn(MC, ac))
    before = _eval_loss(a2e_prior.init_params(MC, 0), batch, loss_fn)
    after = _eval_loss(params, batch, loss_fn)
    assert after < 0.5 * before, (before, after)
    png = tmp_path / "w" / "samples" / "a2e_step0000100.png"
    import imageio.v3 as iio
    img = iio.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 1
    assert os.listdir(tmp_path / "w" / "tb")
    # the trained prior predicts expressions for a whole clip
    audio = clips[0].audio[:40]
    pred = diffusion.predict_expressions(MC, params, audio, jax.random.PRNGKey(0), num_steps=10,
                                         style_id=1, window=16, context=4)
    assert pred.shape == (40, 53) and bool(jnp.all(jnp.isfinite(pred)))
    again = diffusion.predict_expressions(MC, params, audio, jax.random.PRNGKey(0), num_steps=10,
                                          style_id=1, window=16, context=4)
    np.testing.assert_array_equal(np.asarray(pred), np.asarray(again))
    # audio-driven: the predicted jaw opening follows the target better than a constant would
    jaw_err = float(np.mean((np.asarray(pred[:, 50]) - clips[0].expression[:40, 50]) ** 2))
    jaw_var = float(np.var(clips[0].expression[:40, 50]))
    assert jaw_err < jaw_var, (jaw_err, jaw_var)


def test_predict_expressions_rejects_bad_audio():
    params = a2e_prior.init_params(MC, 0)
    with pytest.raises(ValueError, match=r"expected \[T,320\]"):
        diffusion.predict_expressions(MC, params, np.zeros((10, 80)), jax.random.PRNGKey(0), window=8, context=2)


def test_export_round_trips(tmp_path):
    avatar = pytest.importorskip("ggtalker_jax.avatar", exc_type=ImportError)
    from ggtalker_jax import priors

    params = jax.tree.map(lambda x: np.asarray(x) + 0.5, a2e_prior.init_params(MC, 1))
    cfg = avatar.PriorConfig()
    a2e_prior.export_prior(str(tmp_path), cfg, params, {"num_steps": 7})
    loaded, loaded_cfg, trained = priors.load_priors(str(tmp_path))
    assert loaded_cfg == cfg and trained["a2e"] == {"num_steps": 7}
    for a, b in zip(jax.tree.leaves(loaded["a2e"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert json.load(open(tmp_path / "priors.json"))["trained"]["a2e"]["num_steps"] == 7
