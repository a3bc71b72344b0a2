"""`ggtalker adapt --data PREPARED_DIR --workdir DIR [--priors DIR] [--schedule small|paper]`: the paper's
five adaptation stages (`ggtalker_jax.train.adapt`). A rerun with the same flags continues an interrupted
run; a finished workdir is left as it is; other data or another schedule are refused unless --overwrite.
The avatar's head model is the one the data was tracked with (`--head` / `--landmark_embedding` only
when its files moved); priors of another head model are refused (`ggtalker_jax.priors`)."""
from __future__ import annotations

import os

from ggtalker_jax.cli import flags as cli_flags


def define_flags():
    from absl import flags

    from ggtalker_jax.train import adapt as adapt_defaults

    fv = flags.FlagValues()
    flags.DEFINE_string("data", None, "prepared subject directory (from `ggtalker prepare`)", flag_values=fv)
    flags.DEFINE_string("workdir", None, "output directory of the adapted subject", flag_values=fv)
    flags.DEFINE_string("priors", None, "directory with trained priors (default: the bundled small priors "
                        "or fresh networks)", flag_values=fv)
    flags.DEFINE_enum("schedule", "small", ["small", "paper"], "small: steps per stage; paper: Table 1 minutes",
                      flag_values=fv)
    flags.DEFINE_integer("steps_per_stage", None, "steps per stage for --schedule=small (default "
                         "{})".format(adapt_defaults.CPU_STEPS_PER_STAGE), flag_values=fv)
    flags.DEFINE_integer("uv_map_steps", None, "steps of stage 1, the UV map alone, for --schedule=small "
                         f"(default {adapt_defaults.UV_MAP_STEPS_FACTOR} x --steps_per_stage)", flag_values=fv)
    flags.DEFINE_float("minutes_scale", 1.0, "multiplies the paper schedule's minutes", flag_values=fv)
    flags.DEFINE_float("learning_rate", None, "learning rate of stages 2-5 (default: the schedule's: "
                       f"{adapt_defaults.CPU_LEARNING_RATE:g} small, 1e-4 paper)", flag_values=fv)
    flags.DEFINE_float("uv_map_learning_rate", None, "learning rate of stage 1, the UV map alone (default: "
                       f"{adapt_defaults.CPU_UV_MAP_LEARNING_RATE:g} small, 10 x --learning_rate paper)", flag_values=fv)
    flags.DEFINE_integer("batch_size", 2, "frames rendered per step", flag_values=fv)
    flags.DEFINE_integer("image_size", None, "avatar frame size S in pixels, a multiple of 16 (default: "
                         f"{adapt_defaults.CPU_IMAGE_SIZE} for --schedule=small, {adapt_defaults.PAPER_IMAGE_SIZE} "
                         "for paper)", flag_values=fv)
    flags.DEFINE_integer("uv_resolution", None, "R: the identity's UV map is R x R texels, one Gaussian per texel "
                         f"on the head (default: {adapt_defaults.CPU_UV_RESOLUTION} for --schedule=small, "
                         f"{adapt_defaults.PAPER_UV_RESOLUTION} for paper); the prior's generator output is "
                         "resampled to R", flag_values=fv)
    flags.DEFINE_integer("inpainter_size", None, "the Body Inpainter runs at this size, a multiple of 16 <= "
                         f"--image_size (default: {adapt_defaults.CPU_INPAINTER_SIZE} for --schedule=small, the "
                         "prior's inpainter's training size; --image_size for paper); the head itself renders at "
                         "--image_size", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "discard an avatar already in --workdir and adapt from the priors",
                         flag_values=fv)
    flags.DEFINE_boolean("progress", True, "show progress bars", flag_values=fv)
    cli_flags.define_head_model_flags(fv)
    return fv


def main(argv: list[str]) -> int:
    fv = define_flags()
    cli_flags.no_positional(cli_flags.parse_flags(fv, argv))
    cli_flags.require(fv, "data", "workdir")
    from ggtalker_jax.errors import UsageError

    if not os.path.isdir(fv.data):
        raise UsageError(f"--data {fv.data}: no such directory; run `ggtalker prepare --video VIDEO --out DIR` "
                         "first")
    if fv.steps_per_stage is not None:
        cli_flags.positive("steps_per_stage", fv.steps_per_stage, 1, inclusive=True, integer=True)
    if fv.uv_map_steps is not None:
        cli_flags.positive("uv_map_steps", fv.uv_map_steps, 1, inclusive=True, integer=True)
        if fv.schedule == "paper":
            raise UsageError("--uv_map_steps counts steps of --schedule=small; the paper schedule runs by minutes "
                             "(--minutes_scale)")
    for name in ("image_size", "uv_resolution", "inpainter_size"):
        if fv[name].value is not None:
            cli_flags.positive(name, fv[name].value, 1, inclusive=True, integer=True)
    cli_flags.positive("minutes_scale", fv.minutes_scale)
    cli_flags.positive("learning_rate", fv.learning_rate)
    cli_flags.positive("uv_map_learning_rate", fv.uv_map_learning_rate)
    cli_flags.positive("batch_size", fv.batch_size, 1, inclusive=True, integer=True)
    cli_flags.writable_output_dir("workdir", fv.workdir)
    cli_flags.head_model_files(fv)

    from ggtalker_jax.data.dataset import PreparedDataset
    from ggtalker_jax.train import adapt

    PreparedDataset(fv.data).require_tracking()          # bad data fails now, not after start-up
    kw = {k: fv[k].value for k in ("learning_rate", "uv_map_learning_rate") if fv[k].value is not None}
    if fv.schedule == "small":
        stages = adapt.small_schedule(fv.steps_per_stage, uv_map_steps=fv.uv_map_steps, **kw)
    else:
        stages = adapt.paper_schedule(fv.minutes_scale, **kw)
    # The prior's own definition replaces the default one here (train.adapt); only the run-time choices count.
    config = adapt.default_avatar_config(fv.schedule, fv.image_size, fv.uv_resolution, fv.inpainter_size)
    summary = adapt.adapt(fv.data, fv.workdir, fv.priors, stages, adapt.AdaptConfig(batch_size=fv.batch_size),
                          avatar_config=config, progress=fv.progress, overwrite=fv.overwrite,
                          head=fv.head, landmark_embedding=fv.landmark_embedding)
    for s in summary["stages"]:
        print(f"  {s['name']:<24} {s['steps']:>5} steps {s['seconds']:>8.1f} s  loss "
              f"{s['final'].get('loss', float('nan')):.4f}")
    print(f"adapted subject: {summary['workdir']}")
    return 0
