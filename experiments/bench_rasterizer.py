"""Rasterizer benchmark: median forward and forward+backward time and memory per backend.

    python experiments/bench_rasterizer.py --num_gaussians=4096 --width=128 --height=128 \
        --backends=pallas,xla,gsplat --repeats=5 --json_out=/tmp/bench.json

Same random scene for every backend (Gaussians in a box in front of one or more look-at cameras). Each
backend's row is printed (and the JSON rewritten) as soon as it finishes. Memory: `peak_bytes` from the
device allocator where it reports one (GPU), otherwise the compiled program's own estimate (arguments +
outputs + temporaries from XLA's memory analysis). A JAX backend whose compiled forward+backward needs
more memory than the device has (`--memory_budget_gib`, default: the device's limit or the host's
available memory) is skipped, not run (the dense `xla` reference needs about 13 * C * H * W * N * 4
bytes). gsplat runs only when `torch` and `gsplat` import and CUDA is available. On CPU the Pallas kernels
run in the Pallas interpreter and are slow by construction; the headline case (262,144 Gaussians at
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

from ggtalker_jax.kernels.binning import count_intersections, round_capacity
from ggtalker_jax.kernels.common import KernelTuning, default_tuning
from ggtalker_jax.render import intrinsics_from_fov, look_at_viewmat, project_gaussians, rasterization

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_gaussians", 4096, "Number of Gaussians.")
flags.DEFINE_integer("width", 128, "Image width.")
flags.DEFINE_integer("height", 128, "Image height.")
flags.DEFINE_integer("num_cameras", 1, "Number of cameras.")
flags.DEFINE_integer("channels", 3, "Colour channels D.")
flags.DEFINE_list("backends", ["pallas", "cpu", "xla", "gsplat"], "Backends to time: pallas, cpu, xla, gsplat.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported) after one warm-up.")
flags.DEFINE_integer("seed", 0, "Scene seed.")
flags.DEFINE_string("json_out", None, "Write the results table here as JSON (rewritten after each backend).")
flags.DEFINE_float("memory_budget_gib", None, "Skip a JAX backend whose compiled fwd+bwd needs more (GiB); "
                   "default: the device's memory limit (GPU) or the host's available memory (CPU).")
flags.DEFINE_enum("interpret", "auto", ["auto", "true", "false"], "Pallas interpreter: auto = on CPU only.")
flags.DEFINE_integer("forward_num_warps", None, "Triton warps of the forward kernel (default: per channels).")
flags.DEFINE_integer("backward_num_warps", None, "Triton warps of the backward kernel (default: per channels).")
flags.DEFINE_integer("backward_batch", None, "Gaussians per backward step K (default: per channels).")


def make_scene(num_gaussians: int, width: int, height: int, num_cameras: int, seed: int = 0, channels: int = 3):
    """Random scene as numpy arrays: means, quats, scales, opacities, colors [N, D], viewmats, Ks."""
    rng = np.random.default_rng(seed)
    n = num_gaussians
    means = rng.uniform(-1.0, 1.0, (n, 3)).astype(np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    # Typical splat size: a few pixels, shrinking as N grows (about constant total coverage).
    scales = (rng.uniform(0.2, 1.0, (n, 3)) * 2.0 / np.sqrt(n) ** (2 / 3)).astype(np.float32)
    opacities = rng.uniform(0.1, 1.0, n).astype(np.float32)
    colors = rng.uniform(0.0, 1.0, (n, channels)).astype(np.float32)
    viewmats = np.stack([np.asarray(look_at_viewmat([0.5 * c, 0.0, -3.5], [0.0, 0.0, 0.0]))
                         for c in range(num_cameras)])
    Ks = np.stack([np.asarray(intrinsics_from_fov(50.0, width, height))] * num_cameras)
    return means, quats, scales, opacities, colors, viewmats, Ks


def count_scene_intersections(scene, width: int, height: int, tile_size: int = 16) -> int:
    """True number of tile intersections of the scene (projection + tile boxes only; cheap)."""
    means, quats, scales, opacities, _, viewmats, Ks = (jnp.asarray(x) for x in scene)
    proj = jax.jit(project_gaussians, static_argnums=(5, 6))(means, quats, scales, viewmats, Ks, width, height,
                                                            opacities=opacities)
    counts = count_intersections(proj.means2d, proj.radii, tile_size, -(-width // tile_size), -(-height // tile_size))
    return int(jnp.sum(counts))


def median_ms(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def device_memory_budget() -> tuple[int, str]:
    """Bytes a benchmark may use on the default device, and where the number came from."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), "device bytes_limit"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"], "host MemAvailable"
    except (OSError, KeyError, ValueError):
        return 1 << 62, "unknown"


def compiled_bytes(compiled) -> int | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


def bench_jax(backend, scene, width, height, repeats, *, budget_bytes=None, interpret=None, tuning=None,
              n_intersections=None):
    """Time one JAX backend; returns a result row (with "skipped" when it would not fit in memory)."""
    means, quats, scales, opacities, colors, viewmats, Ks = (jnp.asarray(x) for x in scene)
    n_isect = count_scene_intersections(scene, width, height) if n_intersections is None else n_intersections
    capacity = round_capacity(n_isect + n_isect // 8) if backend in ("pallas", "cpu") else None

    def render(means, quats, scales, opacities, colors):
        img, alpha, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                      backend=backend, capacity=capacity, interpret=interpret, tuning=tuning)
        return img, alpha

    def loss(*params):
        img, alpha = render(*params)
        return jnp.sum(img) + jnp.sum(alpha)

    args = (means, quats, scales, opacities, colors)
    forward = jax.jit(render)
    forward_backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    compiled = forward_backward.lower(*args).compile()
    estimate = compiled_bytes(compiled)
    row = dict(backend=backend, n_intersections=n_isect, capacity=capacity, compiled_bytes=estimate)
    if budget_bytes is not None and estimate is not None and estimate > budget_bytes:
        row["skipped"] = (f"compiled fwd+bwd needs {estimate / 2**30:.1f} GiB > budget "
                          f"{budget_bytes / 2**30:.1f} GiB")
        return row
    fwd_ms = median_ms(forward, args, repeats)
    fwd_bwd_ms = median_ms(compiled, args, repeats)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        mem, mem_kind = int(stats["peak_bytes_in_use"]), "device_peak"
    else:
        mem, mem_kind = estimate, "compiled_estimate"
    row.update(forward_ms=fwd_ms, forward_backward_ms=fwd_bwd_ms, memory_bytes=mem, memory_kind=mem_kind)
    return row


def bench_gsplat(scene, width, height, repeats):
    try:
        import gsplat  # noqa: F401
        import torch
    except ImportError as err:
        return dict(backend="gsplat", skipped=f"not importable: {err}")
    if not torch.cuda.is_available():
        return dict(backend="gsplat", skipped="CUDA not available to torch")
    dev = "cuda"
    means, quats, scales, opacities, colors, viewmats, Ks = (torch.tensor(x, device=dev) for x in scene)
    params = [p.requires_grad_() for p in (means, quats, scales, opacities, colors)]

    def render():
        img, alpha, meta = gsplat.rasterization(*params, viewmats, Ks, width, height, packed=False)
        return img, alpha, meta

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
        img, alpha, _ = render()
        (img.sum() + alpha.sum()).backward()

    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        fwd_ms = timed(render)
        n_isect = int(render()[2]["flatten_ids"].shape[0])
    fwd_bwd_ms = timed(fwd_bwd)
    return dict(backend="gsplat", forward_ms=fwd_ms, forward_backward_ms=fwd_bwd_ms, n_intersections=n_isect,
                memory_bytes=int(torch.cuda.max_memory_allocated()), memory_kind="device_peak",
                version=getattr(gsplat, "__version__", "?"))


def format_row(r) -> str:
    name = r.get("label", r["backend"])
    if "skipped" in r:
        return f"{name:18s} {'-':>10s} {'-':>12s} {'-':>11s}  skipped: {r['skipped']}"
    mem = "-" if r.get("memory_bytes") is None else f"{r['memory_bytes'] / 2**20:.1f}"
    extra = r.get("memory_kind", "")
    if "n_intersections" in r:
        extra += f", {r['n_intersections']} intersections"
    return f"{name:18s} {r['forward_ms']:10.2f} {r['forward_backward_ms']:12.2f} {mem:>11s}  {extra}"


TABLE_HEADER = f"{'backend':18s} {'fwd ms':>10s} {'fwd+bwd ms':>12s} {'memory MiB':>11s}  notes"


def _tuning_from_flags(channels: int) -> KernelTuning | None:
    if FLAGS.forward_num_warps is None and FLAGS.backward_num_warps is None and FLAGS.backward_batch is None:
        return None
    base = default_tuning(channels)
    return KernelTuning(
        forward_num_warps=FLAGS.forward_num_warps or base.forward_num_warps,
        backward_num_warps=FLAGS.backward_num_warps or base.backward_num_warps,
        backward_batch=FLAGS.backward_batch or base.backward_batch,
    )


def main(argv):
    del argv
    for backend in FLAGS.backends:
        if backend not in ("pallas", "cpu", "xla", "gsplat"):
            raise app.UsageError(f"--backends: unknown backend {backend!r}; use pallas, xla, gsplat")
    scene = make_scene(FLAGS.num_gaussians, FLAGS.width, FLAGS.height, FLAGS.num_cameras, FLAGS.seed, FLAGS.channels)
    if FLAGS.memory_budget_gib is not None:
        budget, budget_from = int(FLAGS.memory_budget_gib * 2**30), "--memory_budget_gib"
    else:
        budget, budget_from = device_memory_budget()
    interpret = {"auto": None, "true": True, "false": False}[FLAGS.interpret]
    header = dict(num_gaussians=FLAGS.num_gaussians, width=FLAGS.width, height=FLAGS.height,
                  num_cameras=FLAGS.num_cameras, channels=FLAGS.channels, repeats=FLAGS.repeats,
                  device=str(jax.devices()[0]), jax_backend=jax.default_backend(),
                  memory_budget_bytes=budget, memory_budget_from=budget_from)
    print(header, flush=True)
    print(TABLE_HEADER, flush=True)
    results = []
    n_isect = count_scene_intersections(scene, FLAGS.width, FLAGS.height)
    for backend in FLAGS.backends:
        if backend == "gsplat":
            row = bench_gsplat(scene, FLAGS.width, FLAGS.height, FLAGS.repeats)
        else:
            row = bench_jax(backend, scene, FLAGS.width, FLAGS.height, FLAGS.repeats, budget_bytes=budget,
                            interpret=interpret, tuning=_tuning_from_flags(FLAGS.channels), n_intersections=n_isect)
        results.append(row)
        print(format_row(row), flush=True)
        if FLAGS.json_out:
            with open(FLAGS.json_out, "w") as f:
                json.dump(dict(config=header, results=results), f, indent=2)


if __name__ == "__main__":
    app.run(main)
