"""Shapes, value ranges, BatchNorm handling, gradients, determinism and bf16 of the Flax networks."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.models import (A2ETransformer, BodyInpainter, ColorMLP,
                                 IdentityGaussianGenerator, paper_config, rgb_to_sh0,
                                 sh0_to_rgb, small_config)
from ggtalker_jax.models.color_mlp import uv_positional_encoding

CFG = small_config()
KEY = jax.random.PRNGKey(0)


def _assert_all_grads_nonzero(grads):
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert flat
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"zero gradient for {dead}"
    assert all(np.all(np.isfinite(np.asarray(g))) for _, g in flat)


def _weighted_sum(tree, key):
    leaves = jax.tree_util.tree_leaves(tree)
    keys = jax.random.split(key, len(leaves))
    return sum(jnp.sum(x * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys))


# ---------------------------------------------------------------- generator
def _gen_input(batch=2, res=32):
    return jax.random.uniform(KEY, (batch, res, res, 7))


def test_generator_shapes_ranges_and_batchnorm():
    model = IdentityGaussianGenerator(CFG.generator)
    x = _gen_input()
    variables = model.init(KEY, x)
    assert set(variables) == {"params", "batch_stats"}
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    r, f = CFG.generator.resolution, CFG.generator.feature_dim
    expected = {"offset": 3, "scale": 3, "rotation": 4, "opacity": 1, "sh0": 3, "feature": f}
    assert {k: v.shape for k, v in out.items()} == {k: (2, r, r, c) for k, c in expected.items()}
    assert all(v.dtype == jnp.float32 for v in out.values())
    assert np.all(np.asarray(out["scale"]) > 0)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["rotation"]), axis=-1), 1.0,
                               atol=1e-5)
    op = np.asarray(out["opacity"])
    assert np.all((op > 0) & (op < 1))
    assert np.all(np.abs(np.asarray(out["offset"])) <= CFG.generator.max_offset)
    # Train mode updates running statistics; eval mode uses them and needs no mutable collection.
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    eval_out = model.apply({"params": variables["params"], **updates}, x, train=False)
    assert eval_out["scale"].shape == out["scale"].shape
    with pytest.raises(Exception):  # train mode without a mutable batch_stats collection
        model.apply(variables, x, train=True)


def test_generator_identity_biased_init():
    """At init the raw head is small, so rotations are near identity and opacity near init."""
    model = IdentityGaussianGenerator(CFG.generator)
    x = _gen_input(1)
    out = model.apply(model.init(KEY, x), x)
    q = np.asarray(out["rotation"])
    assert np.all(q[..., 0] > 0.9)
    np.testing.assert_allclose(np.asarray(out["opacity"]), CFG.generator.init_opacity, atol=0.05)


def test_generator_gradients_reach_every_parameter():
    model = IdentityGaussianGenerator(CFG.generator)
    x = _gen_input()
    variables = model.init(KEY, x)

    def loss(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
        return _weighted_sum(out, jax.random.PRNGKey(1))

    _assert_all_grads_nonzero(jax.jit(jax.grad(loss))(variables["params"]))


def test_generator_rejects_bad_input():
    model = IdentityGaussianGenerator(CFG.generator)
    with pytest.raises(ValueError, match="uv_input"):
        model.init(KEY, jnp.zeros((1, 32, 32, 5)))
    with pytest.raises(ValueError, match="divisible by 16"):
        model.init(KEY, jnp.zeros((1, 40, 40, 7)))


def test_sh0_rgb_roundtrip():
    rgb = jnp.array([[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(sh0_to_rgb(rgb_to_sh0(rgb)), rgb, atol=1e-6)
    np.testing.assert_allclose(sh0_to_rgb(jnp.zeros(3)), 0.5)


# ---------------------------------------------------------------- inpainter
def _inpainter_inputs(batch=2, res=32, feat=2):
    ks = jax.random.split(KEY, 5)
    alpha = jax.random.uniform(ks[1], (batch, res, res, 1))
    rgb = jax.random.uniform(ks[0], (batch, res, res, 3)) * alpha  # premultiplied
    feats = jax.random.normal(ks[2], (batch, res, res, feat))
    mask = (jax.random.uniform(ks[3], (batch, res, res, 1)) > 0.5).astype(jnp.float32)
    frame = jax.random.uniform(ks[4], (batch, res, res, 3)) * (1 - mask)
    return rgb, alpha, feats, frame, mask


def test_inpainter_output_range_and_starts_at_composite():
    model = BodyInpainter(CFG.inpainter)
    rgb, alpha, feats, frame, mask = _inpainter_inputs()
    variables = model.init(KEY, rgb, alpha, feats, frame, mask)
    out, _ = model.apply(variables, rgb, alpha, feats, frame, mask, train=True,
                         mutable=["batch_stats"])
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    o = np.asarray(out)
    assert np.all((o >= 0) & (o <= 1))
    composite = np.clip(np.asarray(rgb + (1 - alpha) * frame), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(o, composite, atol=0.01)


def test_inpainter_gradients_and_no_feature_variant():
    model = BodyInpainter(CFG.inpainter)
    rgb, alpha, feats, frame, mask = _inpainter_inputs()
    variables = model.init(KEY, rgb, alpha, feats, frame, mask)

    def loss(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, rgb,
                             alpha, feats, frame, mask, train=True, mutable=["batch_stats"])
        return jnp.mean((out - 0.3) ** 2)

    _assert_all_grads_nonzero(jax.jit(jax.grad(loss))(variables["params"]))

    no_feat = BodyInpainter(dataclasses.replace(CFG.inpainter, render_feature_dim=0))
    v = no_feat.init(KEY, rgb, alpha, None, frame, mask)
    assert no_feat.apply(v, rgb, alpha, None, frame, mask).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="head_mask"):
        no_feat.init(KEY, rgb, alpha, None, frame, mask[:, :16])


# ---------------------------------------------------------------- colour MLP
def test_color_mlp_broadcast_small_init_and_gradients():
    cfg = CFG.color_mlp
    n = 10
    feature = jax.random.normal(KEY, (n, cfg.feature_dim))
    expr = jax.random.normal(jax.random.PRNGKey(2), (3, 53))
    uv = jax.random.uniform(jax.random.PRNGKey(3), (n, 2))
    model = ColorMLP(cfg)
    variables = model.init(KEY, feature, expr, uv)
    out = model.apply(variables, feature, expr, uv)
    assert out.shape == (3, n, 3)
    assert np.max(np.abs(np.asarray(out))) < 0.05  # residual starts near 0
    # Frames are independent: the batched result equals the per-frame results.
    for i in range(3):
        np.testing.assert_allclose(out[i], model.apply(variables, feature, expr[i], uv),
                                   rtol=1e-5, atol=1e-7)
    assert not np.allclose(out[0], out[1])  # the expression matters

    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, feature, expr, uv) ** 2
                                       + model.apply({"params": p}, feature, expr, uv)))(
        variables["params"])
    _assert_all_grads_nonzero(grads)
    with pytest.raises(ValueError, match="uv"):
        model.apply(variables, feature, expr, None)


def test_uv_positional_encoding_closed_form():
    uv = jnp.array([[0.25, 0.5]])
    enc = np.asarray(uv_positional_encoding(uv, 2))
    expected = [np.sin(np.pi * .25), np.sin(np.pi * .5), np.sin(2 * np.pi * .25),
                np.sin(2 * np.pi * .5), np.cos(np.pi * .25), np.cos(np.pi * .5),
                np.cos(2 * np.pi * .25), np.cos(2 * np.pi * .5)]
    # layout: [sin(f0 u), sin(f0 v), cos(f0 u), cos(f0 v), sin(f1 u), ...]
    got = enc.reshape(2, 2, 2)  # [freq, sin/cos, uv]
    np.testing.assert_allclose(got[:, 0].ravel(), expected[:4], atol=1e-6)
    np.testing.assert_allclose(got[:, 1].ravel(), expected[4:], atol=1e-6)


# ---------------------------------------------------------------- A2E
def _a2e_inputs(b=2, t=8, tp=3):
    ks = jax.random.split(KEY, 3)
    return (jax.random.normal(ks[0], (b, t, 53)), jnp.array([3, 40]),
            jax.random.normal(ks[1], (b, t, CFG.a2e.audio_dim)),
            jax.random.normal(ks[2], (b, tp, 53)), jnp.array([0, 2]), jnp.array([True, False]))


def test_a2e_shapes_determinism_and_conditioning():
    model = A2ETransformer(CFG.a2e)
    noisy, t, audio, prev, style, cond = _a2e_inputs()
    v1 = model.init(KEY, noisy, t, audio, prev, style, cond)
    v2 = model.init(KEY, noisy, t, audio, prev, style, cond)
    chex_equal = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b), v1, v2)
    assert all(jax.tree_util.tree_leaves(chex_equal))
    out = jax.jit(model.apply)(v1, noisy, t, audio, prev, style, cond)
    assert out.shape == (2, 8, 53) and out.dtype == jnp.float32
    # float timesteps, no prev, no style, no mask all accepted
    assert model.apply(v1, noisy, t.astype(jnp.float32), audio).shape == (2, 8, 53)
    # Row 1 has cond_mask False: its output ignores the audio; row 0 does not.
    out2 = model.apply(v1, noisy, t, audio + 1.0, prev, style, cond)
    np.testing.assert_allclose(out2[1], out[1], atol=1e-5)
    assert not np.allclose(out2[0], out[0], atol=1e-4)
    # previous frames and style condition the output
    assert not np.allclose(model.apply(v1, noisy, t, audio, prev + 1.0, style, cond), out, atol=1e-4)
    assert not np.allclose(model.apply(v1, noisy, t, audio, prev, style + 1, cond), out, atol=1e-4)
    # Different window lengths run with the same parameters (length-agnostic).
    n2, _, a2, p2, _, _ = _a2e_inputs(t=5, tp=2)
    assert model.apply(v1, n2, t, a2, p2, style, cond).shape == (2, 5, 53)


def test_a2e_dropout_and_gradients():
    model = A2ETransformer(CFG.a2e)
    noisy, t, audio, prev, style, cond = _a2e_inputs()
    variables = model.init(KEY, noisy, t, audio, prev, style, cond)

    def loss(params, rng):
        x0 = model.apply({"params": params}, noisy, t, audio, prev, style, cond, train=True,
                         rngs={"dropout": rng})
        return jnp.mean((x0 - 0.5) ** 2)

    _assert_all_grads_nonzero(jax.grad(loss)(variables["params"], jax.random.PRNGKey(5)))
    a = model.apply(variables, noisy, t, audio, prev, style, cond, train=True,
                    rngs={"dropout": jax.random.PRNGKey(1)})
    b = model.apply(variables, noisy, t, audio, prev, style, cond, train=True,
                    rngs={"dropout": jax.random.PRNGKey(2)})
    assert not np.allclose(a, b)


def test_a2e_rejects_bad_shapes():
    model = A2ETransformer(CFG.a2e)
    noisy, t, audio, prev, style, cond = _a2e_inputs()
    with pytest.raises(ValueError, match="audio"):
        model.init(KEY, noisy, t, audio[:, :5], prev)
    with pytest.raises(ValueError, match="noisy_expr"):
        model.init(KEY, noisy[..., :50], t, audio)


# ---------------------------------------------------------------- bf16 + configs
def test_bf16_compute_with_fp32_params():
    cfg = small_config(jnp.bfloat16)
    gen = IdentityGaussianGenerator(cfg.generator)
    x = _gen_input(1)
    variables = gen.init(KEY, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    out = jax.jit(gen.apply)(variables, x)
    assert all(v.dtype == jnp.float32 and np.all(np.isfinite(v)) for v in out.values())
    # bf16 forward stays close to the fp32 forward of the same parameters
    out32 = IdentityGaussianGenerator(CFG.generator).apply(variables, x)
    np.testing.assert_allclose(out["opacity"], out32["opacity"], atol=0.05)

    a2e = A2ETransformer(cfg.a2e)
    noisy, t, audio, prev, style, cond = _a2e_inputs()
    va = a2e.init(KEY, noisy, t, audio, prev, style, cond)
    ya = jax.jit(a2e.apply)(va, noisy, t, audio, prev, style, cond)
    assert ya.dtype == jnp.float32 and np.all(np.isfinite(ya))

    inp = BodyInpainter(cfg.inpainter)
    args = _inpainter_inputs(1)
    y = inp.apply(inp.init(KEY, *args), *args)
    assert y.dtype == jnp.float32 and np.all((np.asarray(y) >= 0) & (np.asarray(y) <= 1))
    cm = ColorMLP(cfg.color_mlp)
    f, e, uv = jnp.ones((4, 4)), jnp.ones((53,)), jnp.zeros((4, 2))
    assert cm.apply(cm.init(KEY, f, e, uv), f, e, uv).dtype == jnp.float32


def test_paper_config_counts_without_memory():
    from ggtalker_jax.models.summary import describe, main
    cfg = paper_config()
    gen = describe(cfg, "generator")
    assert gen["outputs"]["scale"] == (1, 512, 512, 3)
    assert describe(cfg, "a2e")["params"] > 10_000_000
    with pytest.raises(ValueError, match="widths"):
        dataclasses.replace(cfg.generator, widths=(8, 16))
    assert main(["--config", "small"]) == 0
