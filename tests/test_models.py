"""Shapes, value ranges, BatchNorm handling, gradients and bf16 of the UNets and the colour MLP.

Each network is initialised once per module (jit) and its apply functions are jitted once, to keep
compile time low on a shared CPU.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ggtalker_jax.models import (BodyInpainter, ColorMLP, IdentityGaussianGenerator, paper_config,
                                 rgb_to_sh0, sh0_to_rgb, small_config)
from ggtalker_jax.models.color_mlp import uv_positional_encoding

CFG = small_config()
KEY = jax.random.PRNGKey(0)


def assert_all_grads_nonzero(grads):
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
@pytest.fixture(scope="module")
def gen():
    model = IdentityGaussianGenerator(CFG.generator)
    x = jax.random.uniform(KEY, (2, 32, 32, 7))
    variables = jax.jit(model.init)(KEY, x)
    train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    return model, x, variables, train_apply


def test_generator_shapes_ranges_and_batchnorm(gen):
    model, x, variables, train_apply = gen
    assert set(variables) == {"params", "batch_stats"}
    out, updates = train_apply(variables, x)
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
    # Train mode updates the running statistics ...
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    after = jax.tree_util.tree_leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # ... eval mode uses them (so its output differs from the batch-statistics output) ...
    eval_out = jax.jit(model.apply)({"params": variables["params"], **updates}, x)
    assert eval_out["scale"].shape == out["scale"].shape
    assert not np.allclose(eval_out["scale"], out["scale"])
    # ... and train mode without a mutable batch_stats collection is an error.
    with pytest.raises(Exception, match="batch_stats"):
        model.apply(variables, x, train=True)
    # At init (eval mode) the raw head is small: rotations near identity, opacity near its init.
    init_out = jax.jit(model.apply)(variables, x)
    assert np.all(np.asarray(init_out["rotation"])[..., 0] > 0.9)
    np.testing.assert_allclose(init_out["opacity"], CFG.generator.init_opacity, atol=0.05)


def test_generator_gradients_reach_every_parameter(gen):
    model, x, variables, train_apply = gen

    def loss(params):
        out, _ = train_apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return _weighted_sum(out, jax.random.PRNGKey(1))

    assert_all_grads_nonzero(jax.jit(jax.grad(loss))(variables["params"]))


def test_generator_rejects_bad_input(gen):
    model = gen[0]
    with pytest.raises(ValueError, match="uv_input"):
        jax.eval_shape(model.init, KEY, jnp.zeros((1, 32, 32, 5)))
    with pytest.raises(ValueError, match="divisible by 16"):
        jax.eval_shape(model.init, KEY, jnp.zeros((1, 40, 40, 7)))


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


@pytest.fixture(scope="module")
def inp():
    model = BodyInpainter(CFG.inpainter)
    args = _inpainter_inputs()
    variables = jax.jit(model.init)(KEY, *args)
    train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    return model, args, variables, train_apply


def test_inpainter_output_range_and_starts_at_composite(inp):
    model, (rgb, alpha, feats, frame, mask), variables, train_apply = inp
    out, _ = train_apply(variables, rgb, alpha, feats, frame, mask)
    assert out.shape == (2, 32, 32, 3) and out.dtype == jnp.float32
    o = np.asarray(out)
    assert np.all((o >= 0) & (o <= 1))
    composite = np.clip(np.asarray(rgb + (1 - alpha) * frame), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(o, composite, atol=0.01)
    with pytest.raises(ValueError, match="head_mask"):
        jax.eval_shape(model.init, KEY, rgb, alpha, feats, frame, mask[:, :16])
    with pytest.raises(ValueError, match="head_features"):
        jax.eval_shape(model.init, KEY, rgb, alpha, None, frame, mask)


def test_inpainter_gradients_reach_every_parameter(inp):
    model, args, variables, train_apply = inp

    def loss(params):
        out, _ = train_apply({"params": params, "batch_stats": variables["batch_stats"]}, *args)
        return jnp.mean((out - 0.3) ** 2)

    assert_all_grads_nonzero(jax.jit(jax.grad(loss))(variables["params"]))


def test_inpainter_without_render_features():
    model = BodyInpainter(dataclasses.replace(CFG.inpainter, render_feature_dim=0))
    rgb, alpha, _, frame, mask = _inpainter_inputs(1)
    out = jax.eval_shape(model.init, KEY, rgb, alpha, None, frame, mask)
    assert out["params"]["down0"]["ConvBNReLU_0"]["Conv_0"]["kernel"].shape[2] == 8


# ---------------------------------------------------------------- colour MLP
def test_color_mlp_broadcast_small_init_and_gradients():
    cfg = CFG.color_mlp
    n = 10
    feature = jax.random.normal(KEY, (n, cfg.feature_dim))
    expr = jax.random.normal(jax.random.PRNGKey(2), (3, 53))
    uv = jax.random.uniform(jax.random.PRNGKey(3), (n, 2))
    model = ColorMLP(cfg)
    variables = model.init(KEY, feature, expr, uv)
    apply = jax.jit(model.apply)
    out = apply(variables, feature, expr, uv)
    assert out.shape == (3, n, 3)
    assert np.max(np.abs(np.asarray(out))) < 0.05  # residual starts near 0
    # Frames are independent: the batched result equals the per-frame results.
    for i in range(3):
        np.testing.assert_allclose(out[i], apply(variables, feature, expr[i], uv),
                                   rtol=1e-5, atol=1e-7)
    assert not np.allclose(out[0], out[1])  # the expression matters

    def loss(p):
        y = apply({"params": p}, feature, expr, uv)
        return jnp.sum(y ** 2 + y)

    assert_all_grads_nonzero(jax.grad(loss)(variables["params"]))
    with pytest.raises(ValueError, match="uv"):
        model.apply(variables, feature, expr, None)


def test_uv_positional_encoding_closed_form():
    u, v = 0.25, 0.5
    enc = np.asarray(uv_positional_encoding(jnp.array([[u, v]]), 2)).reshape(2, 2, 2)
    for k in range(2):  # layout [freq k][sin, cos][u, v]
        f = (2.0 ** k) * np.pi
        np.testing.assert_allclose(enc[k, 0], [np.sin(f * u), np.sin(f * v)], atol=1e-6)
        np.testing.assert_allclose(enc[k, 1], [np.cos(f * u), np.cos(f * v)], atol=1e-6)


# ---------------------------------------------------------------- bf16 + configs
def test_bf16_compute_with_fp32_params(gen, inp):
    """bf16 modules share the fp32 parameter tree: same checkpoint, cheaper compute."""
    cfg = small_config(jnp.bfloat16)
    _, x, variables, _ = gen
    out = jax.jit(IdentityGaussianGenerator(cfg.generator).apply)(variables, x)
    assert all(v.dtype == jnp.float32 and np.all(np.isfinite(v)) for v in out.values())
    out32 = jax.jit(gen[0].apply)(variables, x)
    np.testing.assert_allclose(out["opacity"], out32["opacity"], atol=0.05)
    np.testing.assert_allclose(out["scale"], out32["scale"], rtol=0.1)

    _, args, ivars, _ = inp
    y = jax.jit(BodyInpainter(cfg.inpainter).apply)(ivars, *args)
    assert y.dtype == jnp.float32 and np.all((np.asarray(y) >= 0) & (np.asarray(y) <= 1))

    cm = ColorMLP(cfg.color_mlp)
    f, e, uv = jnp.ones((4, 4)), jnp.ones((53,)), jnp.zeros((4, 2))
    cvars = cm.init(KEY, f, e, uv)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(cvars))
    assert cm.apply(cvars, f, e, uv).dtype == jnp.float32


def test_paper_config_shapes_and_counts_without_memory(capsys):
    from ggtalker_jax.models.summary import describe, main
    cfg = paper_config()
    gen_info = describe(cfg, "generator")
    assert gen_info["outputs"]["scale"] == (1, 512, 512, 3)
    assert gen_info["outputs"]["feature"] == (1, 512, 512, cfg.generator.feature_dim)
    assert describe(cfg, "inpainter")["outputs"] == (1, 512, 512, 3)
    with pytest.raises(ValueError, match="widths"):
        dataclasses.replace(cfg.generator, widths=(8, 16))
    assert main(["--config", "paper", "--modules", "color_mlp"]) == 0
    from ggtalker_jax import head
    from ggtalker_jax.head import uv
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == "uv texels: 262144"
    bound = uv.build_uv_binding(head.load("open"), 512).num_gaussians
    assert 0.9 * 262144 < bound < 262144 and lines[-1] == f"gaussians: {bound}"
