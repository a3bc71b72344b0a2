"""CPU rasterizer benchmark at the product's sizes: forward and forward+backward per backend.

    JAX_PLATFORMS=cpu python experiments/bench_cpu_raster.py --backends=pallas,cpu \
        --num_gaussians=16384,65536 --image_sizes=128,256 --batches=1,2 --json_out=/tmp/bench_cpu.json

Scene ("head"): N Gaussians on a closed ellipsoid shell in front of the head-space camera (front
and back surfaces both project, as a UV-bound head does), flat along the surface normal, sized so
neighbours overlap, with opacities uniform in [--min_opacity, 1]; the head fills ~80% of the frame.
"box" is `kernels.bench`-style random Gaussians in a box. A batch of B frames is rendered as the
product does (`render_frames` in `avatar.py`): `jax.vmap` over `rasterization()` with one camera per
frame, inside `jax.jit`, with the default static capacity; each frame moves the head slightly.

Every (backend, N, size, batch) case runs in its own subprocess, so "peak RSS" is that case's own
peak resident memory (JAX runtime included: compare backends with it, not absolute values).
Reported: median forward ms and forward+backward ms (gradients of every Gaussian parameter) over
--repeats runs after a warm-up, first-call (compile) seconds, intersections per frame. Each row is
printed when its case finishes. backend "xla" (the dense reference) is skipped when pixels x N
exceeds --max_dense_pixel_gaussians.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("backends", ["pallas", "cpu"], "Backends: pallas, cpu, xla, auto.")
flags.DEFINE_list("num_gaussians", ["16384", "65536"], "Gaussian counts N.")
flags.DEFINE_list("image_sizes", ["128", "256"], "Square image sizes.")
flags.DEFINE_list("batches", ["1", "2"], "Frames per step (vmapped).")
flags.DEFINE_integer("channels", 3, "Colour channels D.")
flags.DEFINE_integer("tile_size", 16, "Tile size.")
flags.DEFINE_enum("scene", "head", ["head", "box"], "Scene layout.")
flags.DEFINE_float("min_opacity", 0.5, "Opacities are uniform in [min_opacity, 1].")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported) after one warm-up.")
flags.DEFINE_integer("seed", 0, "Scene seed.")
flags.DEFINE_float("max_dense_pixel_gaussians", 2e8, "Skip backend xla above this many pixels x Gaussians.")
flags.DEFINE_bool("isolate", True, "Run each case in a subprocess (per-case peak RSS).")
flags.DEFINE_string("case", None, "Internal: run one case 'backend,N,size,batch' and print its JSON.")
flags.DEFINE_string("json_out", None, "Write all rows here as JSON.")


def make_scene(num_gaussians: int, size: int, batch: int, scene: str, min_opacity: float, channels: int,
               seed: int = 0):
    """Numpy scene: means [N, 3], quats [N, 4], scales [N, 3], opacities [N], colors [N, D], plus
    per-frame head translations [B, 3], viewmat [1, 4, 4] and K [1, 3, 3] (head-space camera)."""
    import numpy as np

    from ggtalker_jax.render import head_space_viewmat, intrinsics_from_fov, look_at_viewmat

    rng = np.random.default_rng(seed)
    n = num_gaussians
    if scene == "head":
        # Fibonacci points on an ellipsoid of head size 0.5-0.7 m in front of the camera (looking down -z).
        i = np.arange(n) + 0.5
        polar = np.arccos(1.0 - 2.0 * i / n)
        azimuth = np.pi * (1.0 + 5.0**0.5) * i
        normal = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], -1)
        axes = np.array([0.08, 0.11, 0.09])
        means = normal * axes + np.array([0.0, 0.0, -0.6])
        spacing = np.sqrt(4.0 * np.pi * np.prod(axes) ** (2.0 / 3.0) / n)
        scales = np.stack([spacing * rng.uniform(0.4, 0.8, n), spacing * rng.uniform(0.4, 0.8, n),
                           np.full(n, 0.05 * spacing)], -1)
        viewmat = np.asarray(head_space_viewmat())
        fov = 22.0
    else:
        means = rng.uniform(-1.0, 1.0, (n, 3))
        scales = rng.uniform(0.2, 1.0, (n, 3)) * 2.0 / np.sqrt(n) ** (2 / 3)
        viewmat = np.asarray(look_at_viewmat([0.0, 0.0, -3.5], [0.0, 0.0, 0.0]))
        fov = 50.0
    quats = rng.normal(size=(n, 4))
    opacities = rng.uniform(min_opacity, 1.0, n)
    colors = rng.uniform(0.0, 1.0, (n, channels))
    shifts = np.concatenate([np.zeros((1, 3)), rng.normal(scale=0.005, size=(batch - 1, 3))])
    K = np.asarray(intrinsics_from_fov(fov, size, size))
    f32 = lambda x: np.asarray(x, np.float32)
    return tuple(f32(x) for x in (means, quats, scales, opacities, colors, shifts, viewmat[None], K[None]))


def _median_ms(fn, args, repeats):
    start = time.perf_counter()
    import jax
    jax.block_until_ready(fn(*args))
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), first_s


def run_case(backend: str, n: int, size: int, batch: int) -> dict:
    """Times one case in this process; returns its row."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ggtalker_jax.render import rasterization

    scene = make_scene(n, size, batch, FLAGS.scene, FLAGS.min_opacity, FLAGS.channels, FLAGS.seed)
    means, quats, scales, opacities, colors, shifts, viewmat, K = (jnp.asarray(x) for x in scene)
    rng = np.random.default_rng(1)
    w_img = jnp.asarray(rng.normal(size=(batch, size, size, FLAGS.channels)), jnp.float32)
    w_alpha = jnp.asarray(rng.normal(size=(batch, size, size, 1)), jnp.float32)
    tile = FLAGS.tile_size

    def render(means, quats, scales, opacities, colors):
        def one(shift):
            img, alpha, meta = rasterization(means + shift, quats, scales, opacities, colors, viewmat, K, size, size,
                                             tile_size=tile, backend=backend)
            return img[0], alpha[0], meta["n_intersections"], meta["overflow"]
        return jax.vmap(one)(shifts)

    def loss(*params):
        img, alpha, _, _ = render(*params)
        return jnp.sum(img * w_img) + jnp.sum(alpha * w_alpha)

    params = (means, quats, scales, opacities, colors)
    forward = jax.jit(render)
    forward_backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    _, _, n_isect, overflow = forward(*params)
    fwd_ms, fwd_first = _median_ms(forward, params, FLAGS.repeats)
    fwd_bwd_ms, fwd_bwd_first = _median_ms(forward_backward, params, FLAGS.repeats)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return dict(backend=backend, num_gaussians=n, image_size=size, batch=batch, forward_ms=fwd_ms,
                forward_backward_ms=fwd_bwd_ms, first_call_s=fwd_first + fwd_bwd_first, peak_rss_mib=peak_mib,
                intersections_per_frame=int(np.mean(np.asarray(n_isect))), overflow=bool(np.any(np.asarray(overflow))))


def _row_text(r):
    key = f"{r['backend']:7s} {r['num_gaussians']:7d} {r['image_size']:5d} {r['batch']:3d}"
    if "skipped" in r:
        return f"{key}  skipped: {r['skipped']}"
    return (f"{key} {r['forward_ms']:10.1f} {r['forward_backward_ms']:12.1f} {r['peak_rss_mib']:9.0f} "
            f"{r['first_call_s']:8.1f} {r['intersections_per_frame']:9d}" + ("  OVERFLOW" if r["overflow"] else ""))


def main(argv):
    del argv
    if FLAGS.case:
        backend, n, size, batch = FLAGS.case.split(",")
        print("CASE_JSON " + json.dumps(run_case(backend, int(n), int(size), int(batch))), flush=True)
        return
    import jax
    print(f"jax {jax.__version__}, platform {jax.default_backend()}, {os.cpu_count()} CPUs, scene {FLAGS.scene}, "
          f"D={FLAGS.channels}, tile {FLAGS.tile_size}, repeats {FLAGS.repeats}", flush=True)
    print(f"{'backend':7s} {'N':>7s} {'size':>5s} {'B':>3s} {'fwd ms':>10s} {'fwd+bwd ms':>12s} {'RSS MiB':>9s} "
          f"{'first s':>8s} {'isect/frm':>9s}", flush=True)
    rows = []
    for n in (int(x) for x in FLAGS.num_gaussians):
        for size in (int(x) for x in FLAGS.image_sizes):
            for batch in (int(x) for x in FLAGS.batches):
                for backend in FLAGS.backends:
                    if backend == "xla" and size * size * n > FLAGS.max_dense_pixel_gaussians:
                        row = dict(backend=backend, num_gaussians=n, image_size=size, batch=batch,
                                   skipped=f"dense reference: {size * size} pixels x {n} Gaussians too large")
                    elif FLAGS.isolate:
                        argv = [sys.executable, os.path.abspath(__file__), f"--case={backend},{n},{size},{batch}"]
                        argv += [f"--{name}={getattr(FLAGS, name)}" for name in
                                 ("channels", "tile_size", "scene", "min_opacity", "repeats", "seed")]
                        proc = subprocess.run(argv, capture_output=True, text=True)
                        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CASE_JSON ")]
                        if proc.returncode != 0 or not lines:
                            row = dict(backend=backend, num_gaussians=n, image_size=size, batch=batch,
                                       skipped=f"failed (rc {proc.returncode}): {proc.stderr.strip()[-300:]}")
                        else:
                            row = json.loads(lines[-1][len("CASE_JSON "):])
                    else:
                        row = run_case(backend, n, size, batch)
                    rows.append(row)
                    print(_row_text(row), flush=True)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(dict(flags={k: getattr(FLAGS, k) for k in ("scene", "channels", "tile_size", "repeats",
                                                                 "min_opacity", "seed")}, rows=rows), f, indent=2)


if __name__ == "__main__":
    app.run(main)
