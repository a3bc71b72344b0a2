"""Rasterizer benchmark: median forward and forward+backward time and memory per backend.

    python -m ggtalker_jax.kernels.bench --num_gaussians=4096 --width=128 --height=128 \
        --backends=pallas,xla,gsplat --repeats=5 --json_out=/tmp/bench.json

Same random scene for every backend (Gaussians in a box in front of one or more look-at cameras).
Memory: `peak_bytes` from the device allocator where it reports one (GPU), otherwise the compiled
program's own estimate (arguments + outputs + temporaries from XLA's memory analysis).
gsplat runs only when `torch` and `gsplat` import and CUDA is available. On CPU the Pallas kernels run
in the Pallas interpreter and are slow by construction; the headline case (262,144 Gaussians at
512x512) is meant for a GPU.
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ggtalker_jax.render import intrinsics_from_fov, look_at_viewmat, rasterization
from ggtalker_jax.render.rasterization import next_power_of_two

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_gaussians", 4096, "Number of Gaussians.")
flags.DEFINE_integer("width", 128, "Image width.")
flags.DEFINE_integer("height", 128, "Image height.")
flags.DEFINE_integer("num_cameras", 1, "Number of cameras.")
flags.DEFINE_list("backends", ["pallas", "xla", "gsplat"], "Backends to time: pallas, xla, gsplat.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported) after one warm-up.")
flags.DEFINE_integer("seed", 0, "Scene seed.")
flags.DEFINE_string("json_out", None, "Write the results table here as JSON.")


def make_scene(num_gaussians: int, width: int, height: int, num_cameras: int, seed: int = 0):
    """Random scene as numpy arrays: means, quats, scales, opacities, colors [N, 3], viewmats, Ks."""
    rng = np.random.default_rng(seed)
    n = num_gaussians
    means = rng.uniform(-1.0, 1.0, (n, 3)).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    # Typical splat size: a few pixels, shrinking as N grows (about constant total coverage).
    scales = (rng.uniform(0.2, 1.0, (n, 3)) * 2.0 / np.sqrt(n) ** (2 / 3)).astype(np.float32)
    opacities = rng.uniform(0.1, 1.0, n).astype(np.float32)
    colors = rng.uniform(0.0, 1.0, (n, 3)).astype(np.float32)
    viewmats = np.stack([np.asarray(look_at_viewmat([0.5 * c, 0.0, -3.5], [0.0, 0.0, 0.0]))
                         for c in range(num_cameras)])
    Ks = np.stack([np.asarray(intrinsics_from_fov(50.0, width, height))] * num_cameras)
    return means, quats, scales, opacities, colors, viewmats, Ks


def _median_ms(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _memory_bytes(jitted, args):
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device_peak"
    analysis = jitted.lower(*args).compile().memory_analysis()
    if analysis is None:
        return None, "unavailable"
    total = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
    return int(total), "compiled_estimate"


def bench_jax(backend, scene, width, height, repeats):
    means, quats, scales, opacities, colors, viewmats, Ks = (jnp.asarray(x) for x in scene)
    _, _, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                               backend="xla" if backend == "xla" else "pallas")
    n_isect = int(meta["n_intersections"])
    capacity = next_power_of_two(max(n_isect, 1024))

    def render(means, quats, scales, opacities, colors):
        img, alpha, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                      backend=backend, capacity=capacity)
        return img, alpha

    def loss(*params):
        img, alpha = render(*params)
        return jnp.sum(img) + jnp.sum(alpha)

    forward = jax.jit(render)
    forward_backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    args = (means, quats, scales, opacities, colors)
    fwd_ms = _median_ms(forward, args, repeats)
    fwd_bwd_ms = _median_ms(forward_backward, args, repeats)
    mem, mem_kind = _memory_bytes(forward_backward, args)
    return dict(backend=backend, forward_ms=fwd_ms, forward_backward_ms=fwd_bwd_ms, memory_bytes=mem,
                memory_kind=mem_kind, n_intersections=n_isect, capacity=capacity)


def bench_gsplat(scene, width, height, repeats):
    try:
        import gsplat  # noqa: F401
        import torch
    except ImportError as err:
        return dict(backend="gsplat", skipped=f"not importable: {err}")
    if not torch.cuda.is_available():
        return dict(backend="gsplat", skipped="CUDA not available")
    dev = "cuda"
    means, quats, scales, opacities, colors, viewmats, Ks = (torch.tensor(x, device=dev) for x in scene)
    params = [p.requires_grad_() for p in (means, quats, scales, opacities, colors)]

    def render():
        img, alpha, _ = gsplat.rasterization(*params, viewmats, Ks, width, height, packed=False)
        return img, alpha

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def fwd_bwd():
        img, alpha = render()
        (img.sum() + alpha.sum()).backward()

    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        fwd_ms = timed(render)
    fwd_bwd_ms = timed(fwd_bwd)
    return dict(backend="gsplat", forward_ms=fwd_ms, forward_backward_ms=fwd_bwd_ms,
                memory_bytes=int(torch.cuda.max_memory_allocated()), memory_kind="device_peak")


def main(argv):
    del argv
    scene = make_scene(FLAGS.num_gaussians, FLAGS.width, FLAGS.height, FLAGS.num_cameras, FLAGS.seed)
    results = []
    for backend in FLAGS.backends:
        if backend == "gsplat":
            results.append(bench_gsplat(scene, FLAGS.width, FLAGS.height, FLAGS.repeats))
        elif backend in ("pallas", "xla"):
            results.append(bench_jax(backend, scene, FLAGS.width, FLAGS.height, FLAGS.repeats))
        else:
            raise app.UsageError(f"--backends: unknown backend {backend!r}; use pallas, xla, gsplat")
    header = dict(num_gaussians=FLAGS.num_gaussians, width=FLAGS.width, height=FLAGS.height,
                  num_cameras=FLAGS.num_cameras, repeats=FLAGS.repeats, device=str(jax.devices()[0]),
                  jax_backend=jax.default_backend())
    print(f"{header}")
    print(f"{'backend':8s} {'fwd ms':>10s} {'fwd+bwd ms':>12s} {'memory MiB':>11s}  notes")
    for r in results:
        if "skipped" in r:
            print(f"{r['backend']:8s} {'-':>10s} {'-':>12s} {'-':>11s}  skipped: {r['skipped']}")
            continue
        mem = "-" if r["memory_bytes"] is None else f"{r['memory_bytes'] / 2**20:.1f}"
        extra = f"{r['memory_kind']}" + (f", {r['n_intersections']} intersections" if "n_intersections" in r else "")
        print(f"{r['backend']:8s} {r['forward_ms']:10.2f} {r['forward_backward_ms']:12.2f} {mem:>11s}  {extra}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(dict(config=header, results=results), f, indent=2)


if __name__ == "__main__":
    app.run(main)
