"""Train the Expression-Visual prior (Identity-Gaussian Generator + colour MLP + Body Inpainter).

    python experiments/train_ev_prior.py --workdir runs/ev --data default --config small --num_steps 2000
    python experiments/train_ev_prior.py --workdir runs/ev --data prep/id1,prep/id2,... --config paper

A second run with the same --workdir resumes from its newest checkpoint ("resumed at step K"). The trained
networks are exported into --priors_dir (default WORKDIR/priors), which `ggtalker adapt --priors` loads.
"""
from __future__ import annotations

import dataclasses
import os
import sys


def main(argv) -> int:
    from absl import flags

    from ggtalker_jax import avatar as avatar_lib
    from ggtalker_jax.cli.flags import parse_flags
    from ggtalker_jax.train import ev_prior

    fv = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "run directory (checkpoints/, tb/, samples/, priors/)", flag_values=fv)
    flags.DEFINE_string("data", "default", "comma-separated prepared dataset dirs, or 'default'", flag_values=fv)
    flags.DEFINE_enum("config", "small", ["small", "paper"], "network sizes", flag_values=fv)
    flags.DEFINE_integer("num_steps", 2000, "training steps", flag_values=fv)
    flags.DEFINE_integer("checkpoint_every", 200, "checkpoint period in steps", flag_values=fv)
    flags.DEFINE_integer("sample_every", 200, "write a GT/render sample grid every N steps", flag_values=fv)
    flags.DEFINE_integer("batch_size", 2, "frames rendered per step", flag_values=fv)
    flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate", flag_values=fv)
    flags.DEFINE_integer("image_size", None, "render size (default: 64 small, 512 paper)", flag_values=fv)
    flags.DEFINE_float("default_seconds", 8.0, "--data default: seconds of the default subject", flag_values=fv)
    flags.DEFINE_string("priors_dir", None, "export directory (default WORKDIR/priors)", flag_values=fv)
    parse_flags(fv, argv)
    if not fv.workdir:
        print("train_ev_prior: --workdir is required", file=sys.stderr)
        return 2
    cfg = avatar_lib.AvatarConfig.paper() if fv.config == "paper" else avatar_lib.AvatarConfig.small()
    if fv.image_size:
        cfg = dataclasses.replace(cfg, image_size=fv.image_size)
    dirs = fv.data.split(",")
    if dirs == ["default"]:
        from ggtalker_jax.data import default_subject
        out = os.path.join(fv.workdir, "default_subject")
        if not os.path.exists(os.path.join(out, "tracking.npz")):
            default_subject.make_default_subject(out, seconds=fv.default_seconds, size=max(128, cfg.image_size))
        dirs = [out]
    result = ev_prior.train_ev_prior(
        dirs, fv.workdir, cfg, fv.num_steps, fv.checkpoint_every,
        ev_prior.EVPriorConfig(learning_rate=fv.learning_rate, batch_size=fv.batch_size),
        fv.sample_every, fv.priors_dir)
    print(f"EV prior trained: {result['ev']['final']}")
    print(f"priors: {os.path.abspath(fv.priors_dir or os.path.join(fv.workdir, 'priors'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
