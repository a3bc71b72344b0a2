"""Fidelity benchmark on real clips (issue 15): prepare -> adapt -> eval with the CLI's defaults, or with
overrides, per clip; prints a table and writes JSON + a frame grid (real | render | error) per clip.

Per run: avatar size, UV resolution and Gaussians, adaptation wall time and peak RSS (of the `ggtalker
adapt` process), held-out PSNR / SSIM / LMD, and the correlation of the rendered mouth opening with the
real one on the test split. `--loop_to_seconds` also adapts on the clip looped to that length (a long
clip for the peak-memory target) and reports its peak RSS.

    python experiments/bench_fidelity.py --data_dir /work/shared/data --clips german_anchor_20s \
        --max_seconds 20 --out /tmp/bench_fidelity [--image_size 256 --uv_resolution 128 \
        --steps_per_stage 60 --uv_map_steps 120 --learning_rate 3e-3 --uv_map_learning_rate 0.1 \
        --schedule small] [--loop_to_seconds 300]

`--sweep FLAG=V1,V2,...` repeats each clip's run for every value of one adapt override (a learning-rate sweep,
`--sweep uv_map_learning_rate=0.03,0.1,0.3`, or a steps-vs-PSNR curve, `--sweep steps_per_stage=30,60,120`);
the table gets a column for it.

Each run is the CLI as a user runs it (child processes running `ggtalker_jax.cli.main`); note the machine's
load (`uptime`, printed) next to any wall time.

Measured (CLI defaults then: 256 px, R = 128 / 16,192 Gaussians, 5 x 60 steps at 3e-3; prepare 512; 2 CPU cores, load ~2;
`--max_test_frames 24`), 2026-12-02:

    clip                  adapt s  RSS GB   PSNR   SSIM   LMD  mouth r   what changed
    retalking_face1_6s       486    3.71   25.77  0.863  3.68   -0.05    (before the two below)
    retalking_face1_6s       558    3.71   26.97  0.885  2.33    0.17    per-frame corrections row-sparse
    retalking_face1_6s       392    3.59   30.89  0.937  2.11    0.03    + head_reach 0
    german_anchor_20s        501    3.61   27.57  0.887  1.79    0.48    both
    german_anchor_20s        982    3.63   27.87  0.896  2.04    0.34    both, --steps_per_stage 120 (load ~4)
    german_anchor_20s        873    3.63   27.73  0.886  1.77    0.53    both, --uv_resolution 192 (load ~4)
    german_anchor_20s        506    3.63   29.67  0.917  1.79    0.53    + stage 1 at 0.1 (was 3e-3)
    german_anchor_20s        636    3.52   30.30  0.924  1.76    0.54    + stage 1 120 steps (load ~3.5)
    retalking_face1_6s       760    3.60   31.24  0.953  2.13   -0.02    the same defaults (load ~3.5)

The last row is the CLI's defaults now (stage 1: 120 steps at 0.1, stages 2-5: 60 at 3e-3). Stage 1 alone
(german, 60 steps, 6 test frames rendered with their tracked expressions, an ad-hoc script on `train.adapt`):
learning rate 3e-3 21.96 dB, 1e-2 24.00, 3e-2 27.95, 1e-1 29.54, 3e-1 27.87; 1e-1 for 120 steps 30.26.
The UV map's per-texel colours had barely moved at 3e-3 (an SH0 step of 3e-3 is 8.5e-4 in RGB), and the
small schedule had dropped the paper's 10x rate of stage 1.
"""
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", os.environ.get("GGTALKER_SHARED_DATA",
                                              str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")),
                    "folder with the real clips (.mp4); default $GGTALKER_SHARED_DATA or ../shared/data")
flags.DEFINE_list("clips", None, "clip names (stems) to run (default: every .mp4 in --data_dir)")
flags.DEFINE_float("max_seconds", 20.0, "use the first seconds of each clip")
flags.DEFINE_integer("prepare_size", 512, "crop size of `ggtalker prepare`")
flags.DEFINE_string("cache", "/tmp/bench_fidelity_prepared", "prepared clips are cached here")
flags.DEFINE_string("out", "/tmp/bench_fidelity", "output folder (workdirs, eval reports, grids, JSON)")
flags.DEFINE_enum("schedule", "small", ["small", "paper"], "adaptation schedule")
flags.DEFINE_integer("image_size", None, "override --image_size (default: the CLI's)")
flags.DEFINE_integer("uv_resolution", None, "override --uv_resolution (default: the CLI's)")
flags.DEFINE_integer("steps_per_stage", None, "override --steps_per_stage (default: the CLI's)")
flags.DEFINE_integer("uv_map_steps", None, "override --uv_map_steps (default: the CLI's)")
flags.DEFINE_float("learning_rate", None, "override --learning_rate (default: the schedule's)")
flags.DEFINE_float("uv_map_learning_rate", None, "override --uv_map_learning_rate (default: the schedule's)")
flags.DEFINE_float("minutes_scale", None, "override --minutes_scale (paper schedule)")
flags.DEFINE_string("sweep", None, "FLAG=V1,V2,...: one run per value of an adapt override above (e.g. "
                    "uv_map_learning_rate=0.03,0.1,0.3 or steps_per_stage=30,60,120): a learning-rate sweep or a "
                    "steps-vs-PSNR curve")
flags.DEFINE_integer("max_test_frames", None, "evaluate at most this many test frames")
flags.DEFINE_float("loop_to_seconds", 0.0, "also adapt on the first clip looped to this length (peak memory)")
flags.DEFINE_integer("loop_steps", 5, "steps per stage of the looped-clip run (memory, not quality)")


def cli(*args: str) -> tuple[float, float]:
    """Runs `ggtalker ARGS` in a child process; returns (wall seconds, the child's peak RSS in GB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    entry = "import sys; from ggtalker_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", entry, *args, *(["--noprogress"] if args[0] != "eval" else [])])
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"ggtalker {' '.join(args)} exited with {proc.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of the children is the largest of any child so far (kB); a smaller one reads as the old max.
    return wall, (peak / 1e6 if peak > before else float("nan"))


def prepared(clip: pathlib.Path) -> pathlib.Path:
    out = pathlib.Path(FLAGS.cache) / f"{clip.stem}_{FLAGS.prepare_size}_{FLAGS.max_seconds:g}s"
    if not (out / "tracking.npz").is_file():
        cli("prepare", "--video", str(clip), "--out", str(out), "--size", str(FLAGS.prepare_size),
            "--max_seconds", f"{FLAGS.max_seconds:g}", "--overwrite")
    return out


ADAPT_OVERRIDES = ("image_size", "uv_resolution", "steps_per_stage", "uv_map_steps", "learning_rate",
                   "uv_map_learning_rate", "minutes_scale")


def flag_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def adapt_flags(overrides: dict | None = None) -> list[str]:
    """`ggtalker adapt` flags: the schedule and the overrides given as flags, `overrides` (a sweep's, the
    looped run's) replacing them."""
    out = ["--schedule", FLAGS.schedule]
    for name in ADAPT_OVERRIDES:
        value = (overrides or {}).get(name, getattr(FLAGS, name))
        if value is not None:
            out += [f"--{name}", flag_text(value)]
    return out


def parse_sweep(text: str | None) -> tuple[str | None, list]:
    """"name=v1,v2" -> (name, [v1, v2]) with values typed as the flag's; (None, [None]) without a sweep."""
    if not text:
        return None, [None]
    name, _, values = text.partition("=")
    if name not in ADAPT_OVERRIDES or not values:
        raise app.UsageError(f"--sweep {text!r}: expected FLAG=V1,V2,... with FLAG one of {ADAPT_OVERRIDES}")
    kind = int if isinstance(FLAGS[name].parser, flags.IntegerParser) else float
    try:
        return name, [kind(v) for v in values.split(",")]
    except ValueError as e:
        raise app.UsageError(f"--sweep {text!r}: {e}") from e


def looped_dataset(src: pathlib.Path, dst: pathlib.Path, seconds: float) -> pathlib.Path:
    """A prepared dataset of `src` played forwards again and again to `seconds` (frames hard-linked or
    copied, per-frame arrays tiled, tracking tiled) - a long clip for the memory measurement."""
    from ggtalker_jax.data import dataset as ds

    data = ds.PreparedDataset(src)
    n = data.num_frames
    total = int(round(seconds * data.fps))
    reps = int(np.ceil(total / n))
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(ds.FRAMES_DIR, ds.MASKS_DIR, "*.npz", "*.npy",
                                                            "*.json"))
    for sub, name in ((ds.FRAMES_DIR, ds.frame_name), (ds.MASKS_DIR, ds.mask_name)):
        (dst / sub).mkdir(exist_ok=True)
        for t in range(total):
            a, b = src / name(t % n), dst / name(t)
            try:
                os.link(a, b)
            except OSError:
                shutil.copyfile(a, b)
    tile = lambda x: np.concatenate([x] * reps)[:total] if np.ndim(x) and len(x) == n else x
    for path in list(src.glob("*.npz")):
        with np.load(path) as z:
            np.savez(dst / path.name, **{k: tile(z[k]) for k in z.files})
    for path in list(src.glob("*.npy")):
        np.save(dst / path.name, tile(np.load(path)))
    meta = json.loads((src / "meta.json").read_text())
    meta.update(num_frames=total, split=ds.split_ranges(total))
    for path in src.glob("*.json"):
        if path.name != "meta.json":
            shutil.copyfile(path, dst / path.name)
    (dst / "meta.json").write_text(json.dumps(meta, indent=2))
    return dst


def run_clip(clip: pathlib.Path, out: pathlib.Path, overrides: dict | None = None) -> dict:
    data = prepared(clip)
    tag = "".join(f"_{k}_{flag_text(v)}" for k, v in (overrides or {}).items())
    work, report = out / (clip.stem + tag) / "workdir", out / (clip.stem + tag) / "eval"
    adapt_s, rss = cli("adapt", "--data", str(data), "--workdir", str(work), "--overwrite",
                       *adapt_flags(overrides=overrides))
    eval_args = ["eval", "--workdir", str(work), "--out", str(report)]
    if FLAGS.max_test_frames:
        eval_args += ["--max_test_frames", str(FLAGS.max_test_frames)]
    cli(*eval_args)
    metrics = json.loads((report / "metrics.json").read_text())
    avatar = json.loads((work / "avatar.json").read_text())["avatar"]
    from ggtalker_jax import avatar as avatar_lib
    static = avatar_lib.AvatarStatic.build(avatar_lib.AvatarConfig.from_dict(avatar))
    grid = out / f"{clip.stem}{tag}_grid.png"
    shutil.copyfile(report / "frame_grid.png", grid)
    return {"clip": clip.stem, "seconds": FLAGS.max_seconds, "image_size": avatar["image_size"],
            "uv_resolution": avatar["uv_resolution"], "gaussians": static.num_gaussians,
            "adapt_s": round(adapt_s, 1), "adapt_peak_rss_gb": round(rss, 2), "psnr": metrics["psnr"],
            "ssim": metrics["ssim"], "lmd": metrics["lmd"], "mouth_corr_real": metrics.get("mouth_corr_real"),
            "grid": str(grid), "flags": adapt_flags(overrides=overrides), "sweep": overrides or {}}


def main(argv):
    del argv
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    data_dir = pathlib.Path(FLAGS.data_dir)
    clips = sorted(data_dir.glob("*.mp4")) if not FLAGS.clips else [data_dir / f"{c}.mp4" for c in FLAGS.clips]
    missing = [str(c) for c in clips if not c.is_file()]
    if missing or not clips:
        raise app.UsageError(f"--clips / --data_dir: no such clips {missing or str(data_dir)}")
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    sweep_name, sweep_values = parse_sweep(FLAGS.sweep)
    rows = [run_clip(c, out, None if sweep_name is None else {sweep_name: v}) for c in clips for v in sweep_values]
    result = {"machine": {"cpus": os.cpu_count(), "loadavg_start": load, "loadavg_end": os.getloadavg()},
              "runs": rows}
    if FLAGS.loop_to_seconds:
        looped = looped_dataset(prepared(clips[0]), pathlib.Path(FLAGS.cache) / f"{clips[0].stem}_looped",
                                FLAGS.loop_to_seconds)
        wall, rss = cli("adapt", "--data", str(looped), "--workdir", str(out / "looped_workdir"), "--overwrite",
                        *adapt_flags({"steps_per_stage": FLAGS.loop_steps}))
        result["long_clip"] = {"seconds": FLAGS.loop_to_seconds, "steps_per_stage": FLAGS.loop_steps,
                               "adapt_s": round(wall, 1), "adapt_peak_rss_gb": round(rss, 2)}
        print(f"long clip ({FLAGS.loop_to_seconds:g} s looped): adapt peak RSS {rss:.2f} GB, {wall:.0f} s")
    head = f"{'clip':<28}{'S':>5}{'R':>5}{'gaussians':>10}{'adapt s':>9}{'RSS GB':>8}{'PSNR':>7}{'SSIM':>7}" \
           f"{'LMD':>7}{'mouth r':>9}" + (f"  {sweep_name}" if sweep_name else "")
    print(head)
    for r in rows:
        print(f"{r['clip']:<28}{r['image_size']:>5}{r['uv_resolution']:>5}{r['gaussians']:>10}{r['adapt_s']:>9.0f}"
              f"{r['adapt_peak_rss_gb']:>8.2f}{r['psnr']:>7.2f}{r['ssim']:>7.3f}{r['lmd']:>7.2f}"
              f"{(r['mouth_corr_real'] if r['mouth_corr_real'] is not None else float('nan')):>9.2f}"
              + (f"  {flag_text(r['sweep'][sweep_name])}" if sweep_name else ""))
    result["machine"]["loadavg_end"] = os.getloadavg()
    (out / "bench_fidelity.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out / 'bench_fidelity.json'}")


if __name__ == "__main__":
    app.run(main)
