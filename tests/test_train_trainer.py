"""Generic trainer: data-parallel step == single-device step, LR schedule, NaN stop keeps last checkpoint."""
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.train import trainer
from ggtalker_jax.checkpoint import Checkpointer

_DP_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from ggtalker_jax import avatar
    from ggtalker_jax.train import a2e_prior, trainer
    assert len(jax.devices()) == 4, jax.devices()
    prior = avatar.PriorConfig(a2e_window=8, a2e_context=0)
    mc = prior.models.a2e
    ac = a2e_prior.A2ETrainConfig(batch_size=8)
    loss_fn = a2e_prior.make_loss_fn(prior, ac)
    import optax
    # Plain SGD: the step is then linear in the averaged gradient (Adam's first step, ~lr*sign(g),
    # would amplify float reduction-order noise on parameters whose gradient is ~0).
    opt = optax.sgd(0.1)
    rng = np.random.default_rng(0)
    batch = {"audio": rng.standard_normal((8, 8, 320)).astype(np.float32),
             "expr": rng.standard_normal((8, 8, 53)).astype(np.float32),
             "prev_expr": np.zeros((8, 0, 53), np.float32),
             "style_id": np.arange(8, dtype=np.int32) % 3}
    params = a2e_prior.init_params(mc, 0)
    out = {}
    for n in (4, 1):
        mesh = trainer.make_mesh(jax.devices()[:n])
        state = trainer.replicate(trainer.init_train_state(params, opt, 0), mesh)
        step = trainer.make_train_step(loss_fn, opt, mesh, donate=False)
        gb = trainer.shard_batch(batch, mesh)
        assert len(gb["audio"].sharding.device_set) == n
        new, metrics = step(state, gb)
        out[n] = (jax.tree.leaves(jax.tree.map(np.asarray, new.params)), float(metrics["loss"]),
                  jax.tree.leaves(jax.tree.map(np.asarray, params)))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(out[4][0], out[1][0]))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(out[4][0], out[4][2]))
    print(json.dumps({"max_param_diff": diff, "moved": moved, "loss4": out[4][1], "loss1": out[1][1]}))
""")


def test_data_parallel_step_equals_single_device_step(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", _DP_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["moved"] > 1e-3          # the step really changed the params
    assert abs(r["loss4"] - r["loss1"]) < 1e-5
    assert r["max_param_diff"] < 1e-6, r


def test_learning_rate_schedule_warmup_then_cosine():
    cfg = trainer.TrainConfig(num_steps=110, learning_rate=0.1, warmup_steps=10, final_lr_fraction=0.0)
    sched = trainer.learning_rate_schedule(cfg)
    assert float(sched(0)) == pytest.approx(0.0)
    assert float(sched(5)) == pytest.approx(0.05, rel=1e-5)
    assert float(sched(10)) == pytest.approx(0.1, rel=1e-5)
    # halfway through the cosine part: 0.1 * (1 + cos(pi/2)) / 2 = 0.05
    assert float(sched(60)) == pytest.approx(0.05, rel=1e-4)
    assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)


class _ToyData:
    """y = 3 x; yields NaN inputs from batch index `nan_at` on. State = next batch index."""

    def __init__(self, nan_at=None):
        self.i, self.nan_at = 0, nan_at

    def __next__(self):
        rng = np.random.default_rng(self.i)
        x = rng.standard_normal((4, 2)).astype(np.float32)
        if self.nan_at is not None and self.i >= self.nan_at:
            x[0, 0] = np.nan
        self.i += 1
        return {"x": x, "y": 3.0 * x}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def _toy_loss(params, batch, rng, batch_stats=None):
    err = batch["x"] * params["w"] - batch["y"]
    return jnp.mean(jnp.square(err)), {"abs_w": jnp.abs(params["w"]).mean()}


def test_toy_training_converges_and_resumes_data_position(tmp_path):
    cfg = trainer.TrainConfig(num_steps=150, learning_rate=0.3, warmup_steps=2, checkpoint_every=50,
                              weight_decay=0.0, grad_clip_norm=0.0)
    state = trainer.run_training(_toy_loss, {"w": jnp.zeros((2,))}, _ToyData(), cfg, tmp_path)
    np.testing.assert_allclose(np.asarray(state.params["w"]), [3.0, 3.0], atol=0.05)
    assert int(state.step) == 150
    with Checkpointer(tmp_path / "checkpoints") as ck:
        assert ck.all_steps() == [50, 100, 150]
        _, meta = ck.restore(100, state)
    assert meta["step"] == 100 and meta["data"] == {"i": 100}
    assert os.listdir(tmp_path / "tb")


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = trainer.TrainConfig(num_steps=20, learning_rate=0.1, warmup_steps=0, checkpoint_every=5)
    with pytest.raises(trainer.TrainingError, match=r"at step 8 .*last good checkpoint is step 5"):
        trainer.run_training(_toy_loss, {"w": jnp.zeros((2,))}, _ToyData(nan_at=7), cfg, tmp_path)
    with Checkpointer(tmp_path / "checkpoints") as ck:
        assert ck.latest() == 5
        state, meta = ck.restore(5, trainer.init_train_state(
            {"w": jnp.zeros((2,))}, trainer.make_optimizer(cfg), 0))
    assert all(math.isfinite(v) for v in np.asarray(state.params["w"]))
    assert meta["data"] == {"i": 5}


def test_row_sparse_adam_is_adam_on_dense_gradients():
    import optax
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    ours, ref = trainer.row_sparse_adam(1e-2), optax.adam(1e-2)
    s1, s2, y1, y2 = ours.init(x), ref.init(x), x, x
    for i in range(6):
        g = jnp.sin(jnp.arange(12.0).reshape(4, 3) * 0.7 + i) + 0.05
        u1, s1 = ours.update(g, s1, y1)
        u2, s2 = ref.update(g, s2, y2)
        y1, y2 = y1 + u1, y2 + u2
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=0, atol=1e-6)


def test_per_row_parameters_move_only_where_the_batch_touched_them():
    """The per-frame rows a batch did not touch keep their value (dense Adam moves them on momentum), a
    touched row's first step is -lr * scale * sign(g), and frozen groups and clipping are as before."""
    import optax
    params = {"head": {"rows": jnp.zeros((5, 2)), "shape": jnp.ones(3)}, "other": {"w": jnp.ones(2)}}
    cfg = trainer.TrainConfig(num_steps=10, learning_rate=0.1, warmup_steps=0, final_lr_fraction=1.0,
                              weight_decay=0.0, trainable=("head",), per_row=("head/rows",), per_row_lr_scale=0.5)
    assert trainer.param_labels(params, cfg.trainable, cfg.per_row) == {
        "head": {"rows": "per_row", "shape": "train"}, "other": {"w": "frozen"}}
    opt = trainer.make_optimizer(cfg)
    state = opt.init(params)
    g = jax.tree.map(jnp.zeros_like, params)
    g["head"]["rows"] = g["head"]["rows"].at[1].set(jnp.array([2.0, -3.0]))
    g["head"]["shape"] = jnp.full(3, 0.5)
    g["other"]["w"] = jnp.ones(2)
    upd, state = opt.update(g, state, params)
    np.testing.assert_allclose(np.asarray(upd["head"]["rows"][1]), [-0.05, 0.05], rtol=1e-5)
    assert not np.any(np.asarray(upd["head"]["rows"])[[0, 2, 3, 4]])
    assert not np.any(np.asarray(upd["other"]["w"]))
    # the next batch touches row 3 only: row 1 stays where it is
    g2 = jax.tree.map(jnp.zeros_like, params)
    g2["head"]["rows"] = g2["head"]["rows"].at[3].set(jnp.array([1.0, 1.0]))
    upd2, state = opt.update(g2, state, params)
    assert not np.any(np.asarray(upd2["head"]["rows"])[[0, 1, 2, 4]])
    np.testing.assert_allclose(np.asarray(upd2["head"]["rows"][3]), [-0.05, -0.05], rtol=1e-5)
    # what dense Adam does with the same gradients: row 1 moves again on the second step
    dense = optax.adam(0.05)
    s = dense.init(params["head"]["rows"])
    _, s = dense.update(g["head"]["rows"], s)
    u, _ = dense.update(g2["head"]["rows"], s)
    assert np.all(np.abs(np.asarray(u[1])) > 1e-3)
    with pytest.raises(ValueError, match="no parameters"):
        trainer.param_labels(params, ("head",), ("head/missing",))
