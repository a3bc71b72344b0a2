"""Train the Audio-Expression (A2E) diffusion prior.

    python experiments/train_a2e_prior.py --workdir runs/a2e --data default --config small --num_steps 2000
    python experiments/train_a2e_prior.py --workdir runs/a2e --data prep/id1,prep/id2 --config paper

A second run with the same --workdir resumes from its newest checkpoint ("resumed at step K"). At the end
the held-out frames (each clip's test split, or its last --holdout_fraction) are sampled from their audio
and the mouth opening compared with the tracked one (and with time-shuffled audio as a control); the
trained A2E params are exported into --priors_dir (default WORKDIR/priors) with
`ggtalker_jax.priors.update_priors`, which adaptation loads, with their training record (data, steps,
seconds, held-out numbers) in priors.json. --a2e_window / --a2e_context are the prior's windowing, used by
training, adaptation and inference alike. Multi-host: pass --coordinator_address, --num_processes and
--process_id on every host (jax.distributed.initialize).
"""
from __future__ import annotations

import os
import sys
import time


def _define_flags():
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints/, tb/, samples/, priors/).", flag_values=fv)
    flags.DEFINE_string("data", "default", "Comma-separated prepared dataset dirs (one identity each), or "
                        "'default' for the built-in default subject.", flag_values=fv)
    flags.DEFINE_enum("config", "small", ["small", "paper"], "Network sizes (AvatarConfig.small/paper).",
                      flag_values=fv)
    flags.DEFINE_integer("num_steps", 2000, "Training steps.", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every", 200, "Checkpoint period in steps.", flag_values=fv)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 16, "Global batch size (multiple of the device count).", flag_values=fv)
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate (warmup + cosine decay).", flag_values=fv)
    flags.DEFINE_integer("warmup_steps", 100, "Linear warmup steps.", flag_values=fv)
    flags.DEFINE_float("grad_clip_norm", 1.0, "Global gradient-norm clip (<= 0: off).", flag_values=fv)
    flags.DEFINE_integer("a2e_window", 32, "Frames the A2E generates at a time (training and inference).",
                         flag_values=fv)
    flags.DEFINE_integer("a2e_context", 4, "Previous frames each window is conditioned on.", flag_values=fv)
    flags.DEFINE_float("holdout_fraction", None, "Hold out the last fraction of every clip (default: each "
                       "dataset's test split).", flag_values=fv)
    flags.DEFINE_float("style_drop_prob", 0.2, "Fraction of windows trained with the generic style 0.",
                       flag_values=fv)
    flags.DEFINE_float("w_lip", 1.0, "Weight of the lip-landmark term (0: off).", flag_values=fv)
    flags.DEFINE_integer("eval_steps", 10, "DDIM steps of the held-out measurement.", flag_values=fv)
    flags.DEFINE_integer("sample_every", 500, "Plot a held-out sample every N steps (0: never).", flag_values=fv)
    flags.DEFINE_integer("log_every", 10, "TensorBoard scalar period in steps.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Random seed (params, data order, diffusion noise).", flag_values=fv)
    flags.DEFINE_string("priors_dir", None, "Where to export the prior (default WORKDIR/priors).", flag_values=fv)
    flags.DEFINE_bool("export_priors", True, "Export the trained prior into --priors_dir at the end.",
                      flag_values=fv)
    flags.DEFINE_float("default_seconds", 20.0, "--data default: seconds of the default subject.", flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.", flag_values=fv)
    return fv


def _default_subject_dir(workdir: str, seconds: float, image_size: int, seed: int) -> str:
    try:
        from ggtalker_jax.data import default_subject
    except ImportError as e:
        raise SystemExit(f"--data default needs ggtalker_jax.data.default_subject, which is not available "
                         f"({e}); pass --data with prepared dataset dirs instead") from None
    out = os.path.join(workdir, "default_subject")
    if not os.path.exists(os.path.join(out, "meta.json")):
        default_subject.make_default_subject(out, seconds, image_size, seed)
    return out


def main(argv: list[str] | None = None) -> int:
    from ggtalker_jax.cli.flags import parse_flags

    argv = list(sys.argv if argv is None else argv)
    fv = _define_flags()
    parse_flags(fv, argv)
    if not fv.workdir:
        print(f"{argv[0]}: --workdir is required", file=sys.stderr)
        return 2
    multi = [fv.coordinator_address, fv.num_processes, fv.process_id]
    import jax

    if any(v is not None for v in multi):
        if any(v is None for v in multi):
            print(f"{argv[0]}: multi-host needs all of --coordinator_address, --num_processes, --process_id",
                  file=sys.stderr)
            return 2
        jax.distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)

    from ggtalker_jax.train import a2e_prior, trainer

    workdir = os.path.abspath(fv.workdir)
    os.makedirs(workdir, exist_ok=True)
    image_size = 64 if fv.config == "small" else 512
    if fv.data == "default":
        data_dirs = [_default_subject_dir(workdir, fv.default_seconds, image_size, fv.seed)]
    else:
        data_dirs = [d for d in fv.data.split(",") if d]
    from ggtalker_jax import avatar, head
    from ggtalker_jax.train import objectives

    prior = avatar.PriorConfig(models_preset=fv.config, a2e_window=fv.a2e_window, a2e_context=fv.a2e_context)
    train_config = trainer.TrainConfig(
        num_steps=fv.num_steps, learning_rate=fv.learning_rate, warmup_steps=fv.warmup_steps,
        grad_clip_norm=fv.grad_clip_norm, checkpoint_every=fv.checkpoint_every,
        keep_checkpoints=fv.keep_checkpoints, log_every=fv.log_every, sample_every=fv.sample_every,
        seed=fv.seed)
    a2e_config = a2e_prior.A2ETrainConfig(batch_size=fv.batch_size, holdout_fraction=fv.holdout_fraction,
                                          style_drop_prob=fv.style_drop_prob, w_lip=fv.w_lip,
                                          sample_steps=fv.eval_steps)
    lip_fn = objectives.lip_vertices_fn(head.load(prior.head_model)) if fv.w_lip > 0 else None
    t0 = time.time()
    params, prior = a2e_prior.train_a2e_prior(data_dirs, workdir, prior, train_config, a2e_config, lip_fn)
    seconds = time.time() - t0
    if fv.export_priors and jax.process_index() == 0:
        clips, _ = a2e_prior.load_clips(data_dirs, prior, a2e_config)
        held_out = a2e_prior.held_out_report(params, prior, clips, num_steps=fv.eval_steps)
        print(f"held out ({held_out['frames']} frames): mouth correlation {held_out.get('mouth_corr', float('nan')):.3f}, "
              f"time-shuffled audio {held_out.get('mouth_corr_shuffled', float('nan')):.3f}", flush=True)
        record = trainer.read_run_record(os.path.join(workdir, "checkpoints"))
        priors_dir = os.path.abspath(fv.priors_dir or os.path.join(workdir, "priors"))
        a2e_prior.export_prior(priors_dir, prior, params, {
            "trained_with": "experiments/train_a2e_prior.py", "data": [os.path.abspath(d) for d in data_dirs],
            "num_steps": fv.num_steps, "batch_size": fv.batch_size, "learning_rate": fv.learning_rate,
            "config": fv.config, "window": fv.a2e_window, "context": fv.a2e_context, "seed": fv.seed,
            "holdout": (f"last {fv.holdout_fraction:g} of each clip" if fv.holdout_fraction
                        else "each dataset's test split"),
            "seconds": round(seconds, 1), "final": record.get("metrics", {}), "held_out": held_out})
        print(f"A2E prior trained ({fv.num_steps} steps, {seconds:.0f} s) and exported to {priors_dir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
