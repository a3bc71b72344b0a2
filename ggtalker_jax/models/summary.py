"""Print parameter counts and input/output shapes of every network at a config.

    python -m ggtalker_jax.models.summary --config paper|small [--image_size 512] [--dtype bfloat16]
        [--measure_memory] [--measure_train] [--modules a2e,generator,color_mlp,inpainter] [--head open]

Shapes and counts come from ``jax.eval_shape`` (no memory is allocated, even at paper size). With
``--measure_memory`` each selected module additionally runs one real eval-mode forward pass (jit,
batch 1) on the default device and the process's peak RSS (``resource.getrusage``) is reported after
it (``--measure_train``: one train-mode forward + backward); the peak is cumulative over the
process, so run one module at a time for per-module numbers.
The inpainter runs at ``--image_size`` (default: 512 for paper, 64 for small; it is fully convolutional).
The last lines are ``uv texels: R * R`` of the generator output and ``gaussians: N``, the texels inside
the UV atlas of ``--head`` (``open`` or a FLAME file): the Gaussians an avatar of that head model has.
"""
from __future__ import annotations

import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ggtalker_jax.models.a2e import A2ETransformer
from ggtalker_jax.models.color_mlp import ColorMLP
from ggtalker_jax.models.configs import ModelsConfig, get_config
from ggtalker_jax.models.generator import IdentityGaussianGenerator
from ggtalker_jax.models.inpainter import BodyInpainter

MODULE_NAMES = ("a2e", "generator", "color_mlp", "inpainter")


def example_inputs(cfg: ModelsConfig, name: str, window: int = 100, prev_frames: int = 10, image_size: int = 512):
    """(module, positional input ShapeDtypeStructs) for one network at batch 1 (the inpainter at
    `image_size` x `image_size`)."""
    f32 = jnp.float32
    sds = jax.ShapeDtypeStruct
    if name == "a2e":
        c = cfg.a2e
        return A2ETransformer(c), (sds((1, window, c.expr_dim), f32), sds((1,), jnp.int32),
                                   sds((1, window, c.audio_dim), f32),
                                   sds((1, prev_frames, c.expr_dim), f32), sds((1,), jnp.int32),
                                   sds((1,), jnp.bool_))
    if name == "generator":
        c = cfg.generator
        r = c.resolution
        return IdentityGaussianGenerator(c), (sds((1, r, r, c.in_channels), f32),)
    if name == "color_mlp":
        c = cfg.color_mlp
        n = cfg.generator.resolution ** 2
        return ColorMLP(c), (sds((n, c.feature_dim), f32), sds((1, c.expr_dim), f32),
                             sds((n, 2), f32))
    if name == "inpainter":
        c = cfg.inpainter
        h = image_size
        feats = sds((1, h, h, c.render_feature_dim), f32) if c.render_feature_dim else None
        return BodyInpainter(c), (sds((1, h, h, 3), f32), sds((1, h, h, 1), f32), feats,
                                  sds((1, h, h, 3), f32), sds((1, h, h, 1), f32))
    raise ValueError(f"unknown module {name!r}; choose from {MODULE_NAMES}")


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def _shapes(tree):
    return jax.tree_util.tree_map(lambda x: None if x is None else tuple(x.shape), tree,
                                  is_leaf=lambda x: x is None)


def describe(cfg: ModelsConfig, name: str, image_size: int = 512) -> dict:
    """Parameter count and shapes of one network, via eval_shape (allocates nothing)."""
    module, inputs = example_inputs(cfg, name, image_size=image_size)
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs)
    out = jax.eval_shape(module.apply, variables, *inputs)
    return {"params": count_params(variables.get("params", {})),
            "batch_stats": count_params(variables.get("batch_stats", {})),
            "inputs": _shapes(inputs), "outputs": _shapes(out)}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def _real_inputs(cfg: ModelsConfig, name: str, image_size: int):
    """(module, random inputs, initialised variables, key) for one network at batch 1."""
    module, specs = example_inputs(cfg, name, image_size=image_size)
    key = jax.random.PRNGKey(0)
    inputs = tuple(None if s is None else
                   (jnp.zeros(s.shape, s.dtype) if s.dtype != jnp.float32
                    else jax.random.uniform(key, s.shape, s.dtype)) for s in specs)
    return module, inputs, jax.jit(module.init)(key, *inputs), key


def _time_twice(fn, *args) -> dict:
    """Seconds of the first (compile + run) and the second call of `fn`, and the peak RSS after them."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return {"compile_and_run_s": first, "run_s": time.perf_counter() - t0, "peak_rss_gib": peak_rss_gib()}


def measure_forward(cfg: ModelsConfig, name: str, image_size: int = 512) -> dict:
    """Run one jitted eval forward pass with real (random) inputs; return seconds and peak RSS."""
    module, inputs, variables, _ = _real_inputs(cfg, name, image_size)
    return _time_twice(jax.jit(module.apply), variables, *inputs)


def measure_train_step(cfg: ModelsConfig, name: str, image_size: int = 512) -> dict:
    """Run one jitted train-mode forward + backward (gradient of the mean of every output w.r.t. the
    parameters; BatchNorm in batch-statistics mode); return seconds and peak RSS."""
    module, inputs, variables, key = _real_inputs(cfg, name, image_size)
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(params):
        kwargs = {"train": True, "mutable": ["batch_stats"]} if "batch_stats" in rest else {}
        if name == "a2e":
            kwargs = {"train": True, "rngs": {"dropout": key}}
        out = module.apply({"params": params, **rest}, *inputs, **kwargs)
        out = out[0] if "mutable" in kwargs else out
        return sum(jnp.mean(x) for x in jax.tree_util.tree_leaves(out))

    return _time_twice(jax.jit(jax.grad(loss)), variables["params"])


def main(argv=None) -> int:
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_enum("config", "small", ["small", "paper"], "network sizes", flag_values=fv)
    flags.DEFINE_integer("image_size", None, "frame size of the inpainter (default 512 paper, 64 small)",
                         flag_values=fv)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype", flag_values=fv)
    flags.DEFINE_list("modules", list(MODULE_NAMES), f"subset of {MODULE_NAMES}", flag_values=fv)
    flags.DEFINE_bool("measure_memory", False, "run a real forward pass per module and report peak RSS",
                      flag_values=fv)
    flags.DEFINE_bool("measure_train", False, "run a real forward + backward (train mode) per module, "
                      "report RSS", flag_values=fv)
    flags.DEFINE_string("head", "open", "head model whose UV atlas binds the Gaussians ('open' or a FLAME "
                        "file); '' skips the count", flag_values=fv)
    argv = ["summary", *(sys.argv[1:] if argv is None else argv)]
    try:
        fv(argv)
    except flags.Error as e:
        print(f"summary: {e}\n\n{fv.get_help()}", file=sys.stderr)
        return 2
    cfg = get_config(fv.config, jnp.dtype(fv.dtype))
    image_size = fv.image_size or (512 if fv.config == "paper" else 64)
    names = list(fv.modules)
    for name in names:
        if name not in MODULE_NAMES:
            print(f"summary: --modules: unknown module {name!r}; choose from {MODULE_NAMES}", file=sys.stderr)
            return 2

    total = 0
    for name in names:
        info = describe(cfg, name, image_size)
        total += info["params"]
        print(f"{name}: params {info['params']:,} (+ batch_stats {info['batch_stats']:,})")
        print(f"  inputs:  {info['inputs']}")
        print(f"  outputs: {info['outputs']}")
        if fv.measure_memory:
            m = measure_forward(cfg, name, image_size)
            print(f"  forward ({jax.default_backend()}, batch 1, {fv.dtype}): compile+run "
                  f"{m['compile_and_run_s']:.2f} s, run {m['run_s']:.2f} s, peak RSS so far "
                  f"{m['peak_rss_gib']:.2f} GiB")
        if fv.measure_train:
            m = measure_train_step(cfg, name, image_size)
            print(f"  train fwd+bwd ({jax.default_backend()}, batch 1, {fv.dtype}): compile+run "
                  f"{m['compile_and_run_s']:.2f} s, run {m['run_s']:.2f} s, peak RSS so far "
                  f"{m['peak_rss_gib']:.2f} GiB")
    print(f"total params: {total:,}")
    r = cfg.generator.resolution
    print(f"uv texels: {r * r}")
    if fv.head:
        from ggtalker_jax import head as head_lib
        from ggtalker_jax.head import uv as uv_lib
        binding = uv_lib.build_uv_binding(head_lib.load(fv.head), r)
        print(f"gaussians: {binding.num_gaussians}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
