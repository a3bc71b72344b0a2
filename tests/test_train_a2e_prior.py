"""A2E prior: the reader, the loss learning the synthetic audio->expression map (held out, against
shuffled audio), sampling, train/inference parity, normalisation, export."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax import avatar
from ggtalker_jax.errors import DatasetError
from ggtalker_jax.models import diffusion, get_config
from ggtalker_jax.train import a2e_prior, trainer

MC = get_config("small").a2e
PRIOR = avatar.PriorConfig(a2e_window=16, a2e_context=4)


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
    ac = a2e_prior.A2ETrainConfig(batch_size=4)
    it = a2e_prior.make_train_iterator([a2e_prior.load_prepared(s) for s in subjects], PRIOR, ac, seed=0)
    b = next(it)
    assert b["audio"].shape == (4, 16, 320) and b["expr"].shape == (4, 16, 53)
    assert b["prev_expr"].shape == (4, 4, 53) and set(b["style_id"].tolist()) <= {1, 2}
    # data position round-trips: a fresh iterator set to the saved state yields the same next batch
    state = it.get_state()
    nxt = next(it)
    it2 = a2e_prior.make_train_iterator([a2e_prior.load_prepared(s) for s in subjects], PRIOR, ac, seed=0)
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["expr"], nxt["expr"])
    # process sharding: two processes see disjoint windows
    w0 = a2e_prior.make_train_iterator([clip], PRIOR, ac, 0, process_index=0, process_count=2)
    w1 = a2e_prior.make_train_iterator([clip], PRIOR, ac, 0, process_index=1, process_count=2)
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


def test_training_learns_the_synthetic_mapping_on_held_out_audio(tmp_path):
    subjects = [a2e_prior.make_synthetic_prepared_dir(str(tmp_path / f"s{i}"), num_frames=320, identity=i, seed=i)
                for i in range(2)]
    ac = a2e_prior.A2ETrainConfig(batch_size=8, sample_steps=10)
    tc = trainer.TrainConfig(num_steps=300, learning_rate=3e-3, warmup_steps=10, checkpoint_every=300,
                             sample_every=300, log_every=50)
    params, prior = a2e_prior.train_a2e_prior(subjects, str(tmp_path / "w"), PRIOR, tc, ac)
    clips = [a2e_prior.load_prepared(s) for s in subjects]
    # the prior it defines: the clips' features and the normalisation of their training frames
    assert prior.audio == clips[0].features and (prior.a2e_window, prior.a2e_context) == (16, 4)
    train = np.concatenate([c.expression[:256] for c in clips])
    np.testing.assert_allclose(prior.expr_mean, train.mean(0), atol=1e-5)
    # held-out ("test" split) windows, fixed noise draws
    s = 262
    batch = {"audio": jnp.stack([c.audio[s:s + 16] for c in clips]),
             "expr": jnp.stack([c.expression[s:s + 16] for c in clips]),
             "prev_expr": jnp.stack([c.expression[s - 4:s] for c in clips]),
             "style_id": jnp.array([1, 2], jnp.int32)}
    loss_fn = jax.jit(a2e_prior.make_loss_fn(prior, ac))
    before = _eval_loss(a2e_prior.init_params(MC, 0), batch, loss_fn)
    after = _eval_loss(params, batch, loss_fn)
    assert after < 0.5 * before, (before, after)
    png = tmp_path / "w" / "samples" / "a2e_step0000300.png"
    import imageio.v3 as iio
    img = iio.imread(png)
    assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 1
    assert os.listdir(tmp_path / "w" / "tb")
    # the trained prior predicts expressions for a whole clip, deterministically
    audio = clips[0].audio[:40]
    kw = dict(num_steps=10, style_id=1, window=16, context=4, norm=prior.expression_norm)
    pred = diffusion.predict_expressions(MC, params, audio, jax.random.PRNGKey(0), **kw)
    assert pred.shape == (40, 53) and bool(jnp.all(jnp.isfinite(pred)))
    again = diffusion.predict_expressions(MC, params, audio, jax.random.PRNGKey(0), **kw)
    np.testing.assert_array_equal(np.asarray(pred), np.asarray(again))
    # audio-driven on held-out audio: the generated mouth follows the known mapping; shuffled audio does not
    report = a2e_prior.held_out_report(params, prior, clips, num_steps=10)
    assert report["frames"] == 128
    assert report["jaw_corr"] > 0.3 and report["mouth_corr"] > 0.3, report
    assert report["mouth_corr_shuffled"] < 0.2, report


def test_predict_expressions_rejects_bad_audio():
    params = a2e_prior.init_params(MC, 0)
    with pytest.raises(ValueError, match=r"expected \[T,320\]"):
        diffusion.predict_expressions(MC, params, np.zeros((10, 80)), jax.random.PRNGKey(0), window=8, context=2)


def test_export_round_trips(tmp_path):
    from ggtalker_jax import priors

    params = jax.tree.map(lambda x: np.asarray(x) + 0.5, a2e_prior.init_params(MC, 1))
    norm = diffusion.ExpressionNorm.fit(np.random.default_rng(0).normal(size=(50, 53)) * np.linspace(0.01, 1, 53))
    cfg = a2e_prior.with_norm(avatar.PriorConfig(a2e_window=16, a2e_context=3), norm)
    a2e_prior.export_prior(str(tmp_path), cfg, params, {"num_steps": 7})
    loaded, loaded_cfg, trained = priors.load_priors(str(tmp_path))
    assert loaded_cfg == cfg and trained["a2e"] == {"num_steps": 7}
    np.testing.assert_array_equal(np.asarray(loaded_cfg.expression_norm.std, np.float32), np.asarray(norm.std))
    # the EV trainer's export keeps the A2E's definition (windowing, features, normalisation)
    priors.update_priors(str(tmp_path), avatar.PriorConfig(), {"color_mlp": loaded["color_mlp"]}, {"ev": {}})
    assert priors.load_priors(str(tmp_path))[1] == cfg
    for a, b in zip(jax.tree.leaves(loaded["a2e"]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert json.load(open(tmp_path / "priors.json"))["trained"]["a2e"]["num_steps"] == 7


def test_expression_norm_round_trip_and_floor():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 53)) * np.r_[np.full(52, 0.5), 1e-6] + 3.0
    norm = diffusion.ExpressionNorm.fit(x)
    z = norm.normalize(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(norm.denormalize(z)), x, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z)[:, :52].std(0), 1.0, atol=1e-3)
    assert float(norm.std[52]) == pytest.approx(0.05 * float(np.max(norm.std[:52])))   # floored, not blown up
    ident = diffusion.ExpressionNorm.identity(53)
    np.testing.assert_array_equal(np.asarray(ident.normalize(jnp.asarray(x))), x.astype(np.float32))
    # a prior without statistics (trained before them) normalises by the identity
    assert np.all(np.asarray(avatar.PriorConfig().expression_norm.std) == 1.0)
    with pytest.raises(ValueError, match="expr_std"):
        avatar.PriorConfig(expr_mean=(0.0,) * 53, expr_std=(0.0,) * 53)


def test_a_window_sampled_with_context_gets_the_training_conditioning():
    """Inference (`predict_expressions`) conditions window k on the `a2e_context` frames before it, in the
    normalised space the trainer feeds: with a predictor that outputs the normalised truth of the frames
    it is asked for, the audio and context every later window sees equal `training_window` of that start,
    normalised as the objective normalises it; the first window has no context."""
    from ggtalker_jax.train import objectives

    t, w, p = 45, 16, 4
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(t, 53)).astype(np.float32)
    audio = np.zeros((t, 320), np.float32)
    audio[:, 0] = np.arange(t)                       # each audio row names its frame
    clip = a2e_prior.PreparedClip("synthetic", audio, truth, 25.0, {"train": (0, t), "test": (t, t)})
    norm = diffusion.ExpressionNorm.fit(truth)
    z_truth = norm.normalize(jnp.asarray(truth))
    seen = []

    def record(start, prev, aud):
        seen.append((int(start), None if prev is None else np.asarray(prev), np.asarray(aud)))

    def apply_fn(params, noisy, tt, aud, prev, style, cond):
        frames = jnp.clip(aud[..., 0].astype(jnp.int32), 0, t - 1)        # [B, W]
        jax.debug.callback(record, frames[0, 0], None if prev is None else prev[0], aud[0])
        return z_truth[frames]

    kw = dict(schedule=diffusion.cosine_schedule(MC.num_train_steps), num_steps=3, expr_dim=53)
    out = diffusion.sample_long(apply_fn, None, jnp.asarray(audio), jax.random.PRNGKey(0), w, p, **kw)
    np.testing.assert_allclose(np.asarray(norm.denormalize(out)), truth, atol=1e-4)
    starts = sorted({s for s, _, _ in seen})
    assert starts == [0, 16, 32]
    for start, prev, aud in seen:
        end = min(start + w, t)
        ref = a2e_prior.training_window(clip, start, end - start, p if start else 0)
        np.testing.assert_array_equal(aud[:end - start], ref["audio"])
        if start == 0:
            assert prev is None
        else:
            np.testing.assert_allclose(prev, np.asarray(norm.normalize(jnp.asarray(ref["prev_expr"]))), atol=1e-5)
    # and the objective feeds the model exactly that context for that window (a spy model)
    fed = {}

    class Spy:
        def apply(self, variables, noisy, tt, aud, prev, style, cond, train=False, prev_mask=None, rngs=None):
            fed.update(prev=prev, audio=aud, mask=prev_mask)
            return noisy

    ref = a2e_prior.training_window(clip, 16, w, p)
    batch = {k: jnp.asarray(v)[None] for k, v in ref.items()}
    weights = objectives.A2EWeights(no_prev_prob=0.0)
    objectives.a2e_denoising_loss(Spy(), None, norm, diffusion.cosine_schedule(MC.num_train_steps), batch["expr"],
                                  batch["audio"], jnp.ones((1,), jnp.int32), jax.random.PRNGKey(0), weights,
                                  prev53=batch["prev_expr"])
    seen_16 = next(prev for s, prev, _ in seen if s == 16)
    np.testing.assert_allclose(np.asarray(fed["prev"])[0], seen_16, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fed["audio"])[0], ref["audio"])
    assert bool(fed["mask"][0])


def test_guidance_one_is_the_conditional_model_and_other_values_change_the_output(subjects):
    from ggtalker_jax.models import A2ETransformer

    params = jax.tree.map(lambda x: x * 3.0, a2e_prior.init_params(MC, 2))   # an untrained but non-trivial A2E
    audio = a2e_prior.load_prepared(subjects[0]).audio[:20]
    kw = dict(window=8, context=2, num_steps=4, style_id=1)
    g1 = diffusion.predict_expressions(MC, params, audio, jax.random.PRNGKey(0), guidance=1.0, **kw)
    # the conditional model alone, window by window, with no unconditional pass
    model = A2ETransformer(MC)
    cond_only = lambda p, x, t, a, pr, s, c: model.apply(p, x, t, a, pr, s, jnp.ones_like(c))  # noqa: E731
    ref = diffusion.sample_long(cond_only, {"params": params}, jnp.asarray(audio), jax.random.PRNGKey(0), 8, 2,
                                schedule=diffusion.cosine_schedule(MC.num_train_steps), num_steps=4, style_id=1)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(ref), atol=1e-5)
    g2 = diffusion.predict_expressions(MC, params, audio, jax.random.PRNGKey(0), guidance=2.0, **kw)
    assert float(jnp.max(jnp.abs(g2 - g1))) > 1e-3
