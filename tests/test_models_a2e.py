"""A2E transformer and diffusion utilities: conditioning, gradients, schedule closed forms, DDIM
exactness with a perfect predictor, guidance arithmetic, determinism and long-clip stitching."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.models import A2ETransformer, small_config
from ggtalker_jax.models import diffusion

CFG = small_config()
KEY = jax.random.PRNGKey(0)
SCHEDULE = diffusion.cosine_schedule(CFG.a2e.num_train_steps)


def _a2e_inputs(b=2, t=8, tp=3):
    ks = jax.random.split(KEY, 3)
    return (jax.random.normal(ks[0], (b, t, 53)), jnp.array([3, 40]),
            jax.random.normal(ks[1], (b, t, CFG.a2e.audio_dim)),
            jax.random.normal(ks[2], (b, tp, 53)), jnp.array([0, 2]), jnp.array([True, False]))


@pytest.fixture(scope="module")
def a2e():
    model = A2ETransformer(CFG.a2e)
    variables = jax.jit(model.init)(KEY, *_a2e_inputs())
    return model, variables, jax.jit(model.apply, static_argnames="train")


def test_a2e_shapes_determinism_and_conditioning(a2e):
    model, v1, apply = a2e
    noisy, t, audio, prev, style, cond = _a2e_inputs()
    v2 = jax.jit(model.init)(KEY, noisy, t, audio, prev, style, cond)
    same = jax.tree_util.tree_map(np.array_equal, v1, v2)
    assert all(jax.tree_util.tree_leaves(same))
    out = apply(v1, noisy, t, audio, prev, style, cond)
    assert out.shape == (2, 8, 53) and out.dtype == jnp.float32
    # Row 1 has cond_mask False: its output ignores the audio; row 0 does not.
    out2 = apply(v1, noisy, t, audio + 1.0, prev, style, cond)
    np.testing.assert_allclose(out2[1], out[1], atol=1e-5)
    assert not np.allclose(out2[0], out[0], atol=1e-4)
    # previous frames, style and timestep condition the output
    assert not np.allclose(apply(v1, noisy, t, audio, prev + 1.0, style, cond), out, atol=1e-4)
    assert not np.allclose(apply(v1, noisy, t, audio, prev, style + 1, cond), out, atol=1e-4)
    assert not np.allclose(apply(v1, noisy, t + 5, audio, prev, style, cond), out, atol=1e-4)
    # float timesteps; no prev / style / mask (defaults: generic style, all conditioned); other T
    n5, _, a5, p2, _, _ = _a2e_inputs(t=5, tp=2)
    assert apply(v1, n5, t.astype(jnp.float32), a5, p2, style, cond).shape == (2, 5, 53)
    none_out = apply(v1, noisy, t, audio, None, None, None)
    assert none_out.shape == (2, 8, 53)
    np.testing.assert_allclose(none_out[0], apply(v1, noisy, t, audio, None, jnp.array([0, 0]),
                                                  jnp.array([True, True]))[0], atol=1e-6)


def test_a2e_gradients_and_dropout(a2e):
    model, variables, apply = a2e
    noisy, t, audio, prev, style, cond = _a2e_inputs()

    def loss(params, rng):
        x0 = model.apply({"params": params}, noisy, t, audio, prev, style, cond, train=True,
                         rngs={"dropout": rng})
        return jnp.mean((x0 - 0.5) ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"], jax.random.PRNGKey(5))
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"zero gradient for {dead}"
    drop = jax.jit(functools.partial(model.apply, train=True))
    a = drop(variables, noisy, t, audio, prev, style, cond, rngs={"dropout": jax.random.PRNGKey(1)})
    b = drop(variables, noisy, t, audio, prev, style, cond, rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(a, b)


def test_a2e_rejects_bad_shapes(a2e):
    model = a2e[0]
    noisy, t, audio, prev, style, cond = _a2e_inputs()
    with pytest.raises(ValueError, match="audio"):
        jax.eval_shape(model.init, KEY, noisy, t, audio[:, :5], prev)
    with pytest.raises(ValueError, match="noisy_expr"):
        jax.eval_shape(model.init, KEY, noisy[..., :50], t, audio)
    with pytest.raises(ValueError, match="style_id"):
        jax.eval_shape(model.init, KEY, noisy, t, audio, None, jnp.zeros((3,), jnp.int32))


# ---------------------------------------------------------------- schedules and q_sample
def test_schedules_closed_form():
    n = 10
    s = diffusion.cosine_schedule(n)
    f = lambda t: math.cos((t / n + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = [f(t + 1) / f(0) for t in range(n)]  # clip of beta at 0.999 inactive except last
    np.testing.assert_allclose(s.alphas_cumprod[:-1], expected[:-1], rtol=1e-5)
    assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)
    assert 0 < float(s.alphas_cumprod[-1]) < 1e-3
    lin = diffusion.linear_schedule(1000)
    np.testing.assert_allclose(np.asarray(lin.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    np.testing.assert_allclose(lin.alphas_cumprod[2],
                               (1 - lin.betas[0]) * (1 - lin.betas[1]) * (1 - lin.betas[2]),
                               rtol=1e-6)


def test_q_sample_and_training_targets():
    x0 = jax.random.normal(KEY, (64, 4, 53))
    tt = diffusion.training_targets(SCHEDULE, x0, jax.random.PRNGKey(3), cond_drop_prob=0.25)
    ab = np.asarray(SCHEDULE.alphas_cumprod)[np.asarray(tt["timestep"])][:, None, None]
    np.testing.assert_allclose(tt["noisy"], np.sqrt(ab) * x0 + np.sqrt(1 - ab) * tt["noise"],
                               rtol=1e-5, atol=1e-6)
    assert tt["timestep"].min() >= 0 and tt["timestep"].max() < SCHEDULE.num_train_steps
    assert 0 < int(np.sum(~np.asarray(tt["cond_mask"]))) < 64


# ---------------------------------------------------------------- DDIM
def _fixed_predictor(x0):
    def apply_fn(params, noisy, t, audio, prev, style, cond_mask):
        return jnp.tile(x0, (noisy.shape[0] // x0.shape[0], 1, 1))  # CFG doubles the batch
    return apply_fn


@pytest.mark.parametrize("num_steps,guidance", [(SCHEDULE.num_train_steps, 1.0), (7, 2.5)])
def test_ddim_perfect_predictor_returns_x0_exactly(num_steps, guidance):
    x0 = jax.random.normal(KEY, (2, 6, 53))
    audio = jnp.zeros((2, 6, 320))
    out = jax.jit(diffusion.ddim_sample, static_argnums=(0, 4))(
        _fixed_predictor(x0), None, audio, jax.random.PRNGKey(7), num_steps, guidance,
        schedule=SCHEDULE)
    np.testing.assert_array_equal(out, x0)


def test_ddim_update_rule_and_guidance_closed_form():
    """Two steps with a predictor x0 = c * x_t (cond) / d * x_t (uncond), checked by hand."""
    c, d, g = 0.5, -0.25, 3.0

    def apply_fn(params, noisy, t, audio, prev, style, cond_mask):
        return noisy * jnp.where(cond_mask, c, d)[:, None, None]

    audio = jnp.zeros((1, 2, 320))
    rng = jax.random.PRNGKey(11)
    out = diffusion.ddim_sample(apply_fn, None, audio, rng, 2, g, shape=(1, 2, 53),
                                schedule=SCHEDULE)
    ts = diffusion.ddim_timesteps(SCHEDULE.num_train_steps, 2)
    assert list(ts) == [SCHEDULE.num_train_steps - 1, 0]
    ab = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
    x = np.asarray(jax.random.normal(rng, (1, 2, 53)), np.float64)
    for a_t, a_prev in ((ab[ts[0]], ab[ts[1]]), (ab[ts[1]], 1.0)):
        x0 = d * x + g * (c * x - d * x)
        eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    np.testing.assert_allclose(out, x, rtol=1e-4)


def test_ddim_with_model_is_deterministic_given_seed(a2e):
    model, variables, _ = a2e
    apply_fn = diffusion.make_a2e_apply_fn(model)
    audio = jax.random.normal(KEY, (1, 8, 320))
    sample = jax.jit(lambda rng: diffusion.ddim_sample(apply_fn, variables, audio, rng, 4, 2.0,
                                                       None, jnp.array([1]), schedule=SCHEDULE))
    a, b = sample(jax.random.PRNGKey(1)), sample(jax.random.PRNGKey(1))
    c = sample(jax.random.PRNGKey(2))
    assert a.shape == (1, 8, 53) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# ---------------------------------------------------------------- long clips
def _chain_predictor():
    """x0 = 1 + mean of the conditioning frames (0 without): window k of a chain is k + 1."""
    def apply_fn(params, noisy, t, audio, prev, style, cond_mask):
        base = 0.0 if prev is None else jnp.mean(prev, axis=(1, 2), keepdims=True)
        return jnp.zeros_like(noisy) + base + 1.0
    return apply_fn


def test_sample_long_stitches_and_chains_windows():
    audio = jnp.zeros((23, 320))
    out = diffusion.sample_long(_chain_predictor(), None, audio, KEY, window=8, overlap=3,
                                schedule=SCHEDULE, num_steps=3)
    assert out.shape == (23, 53)
    expected = np.repeat([1.0, 2.0, 3.0], 8)[:23]
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6)
    independent = diffusion.sample_long(_chain_predictor(), None, audio, KEY, window=8, overlap=0,
                                        schedule=SCHEDULE, num_steps=3)
    np.testing.assert_allclose(independent, 1.0, rtol=1e-6)
    short = diffusion.sample_long(_chain_predictor(), None, audio[:5], KEY, window=8, overlap=3,
                                  schedule=SCHEDULE, num_steps=3)
    assert short.shape == (5, 53)
    with pytest.raises(ValueError, match="overlap"):
        diffusion.sample_long(_chain_predictor(), None, audio, KEY, window=4, overlap=5,
                              schedule=SCHEDULE)


def test_sample_long_with_model(a2e):
    model, variables, _ = a2e
    apply_fn = diffusion.make_a2e_apply_fn(model)
    audio = jax.random.normal(KEY, (19, 320))
    run = jax.jit(lambda rng: diffusion.sample_long(apply_fn, variables, audio, rng, window=8,
                                                    overlap=2, schedule=SCHEDULE, num_steps=2,
                                                    style_id=1))
    a = run(jax.random.PRNGKey(0))
    assert a.shape == (19, 53) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, run(jax.random.PRNGKey(0)))


def test_a2e_bf16_shares_fp32_parameters(a2e):
    _, variables, apply = a2e
    bf16 = A2ETransformer(small_config(jnp.bfloat16).a2e)
    args = _a2e_inputs()
    y16 = jax.jit(bf16.apply)(variables, *args)
    y32 = apply(variables, *args)
    assert y16.dtype == jnp.float32 and np.all(np.isfinite(y16))
    assert float(jnp.max(jnp.abs(y16 - y32))) < 0.1 * float(jnp.max(jnp.abs(y32))) + 0.05
