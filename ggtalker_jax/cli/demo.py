"""`ggtalker demo --out DIR`: the whole system end to end on the built-in default subject
(`ggtalker_jax.demo.run_demo`). A rerun with the same --out reuses what is already there."""
from __future__ import annotations

from ggtalker_jax.cli import flags as cli_flags


def main(argv: list[str]) -> int:
    from absl import flags

    fv = flags.FlagValues()
    flags.DEFINE_string("out", "demo_out", "output directory", flag_values=fv)
    flags.DEFINE_float("seconds", 8.0, "length of the default subject's video", flag_values=fv)
    flags.DEFINE_integer("steps_per_stage", 60, "adaptation steps per stage", flag_values=fv)
    flags.DEFINE_integer("prior_steps", 400, "steps of the quick small priors when none are bundled",
                         flag_values=fv)
    flags.DEFINE_integer("image_size", 256, "render size of the avatar (a multiple of 16)", flag_values=fv)
    flags.DEFINE_integer("uv_resolution", 128, "R: the avatar's UV map is R x R texels (one Gaussian each on "
                         "the head)", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "seed of the default subject", flag_values=fv)
    cli_flags.no_positional(cli_flags.parse_flags(fv, argv))
    cli_flags.positive("seconds", fv.seconds, 1.0, inclusive=True)
    cli_flags.positive("steps_per_stage", fv.steps_per_stage, 1, inclusive=True, integer=True)
    cli_flags.positive("prior_steps", fv.prior_steps, 1, inclusive=True, integer=True)
    cli_flags.writable_output_dir("out", fv.out)

    from ggtalker_jax.demo import run_demo

    from ggtalker_jax.train.adapt import default_avatar_config

    default_avatar_config("small", fv.image_size, fv.uv_resolution)          # bad sizes fail now, naming the flag
    result = run_demo(fv.out, fv.seconds, fv.steps_per_stage, fv.prior_steps, fv.image_size, fv.seed,
                      uv_resolution=fv.uv_resolution)
    total = sum(result["times"].values())
    print(f"\ndemo done in {total:.0f} s")
    print(f"video:   {result['video']}")
    print(f"workdir: {result['workdir']}  (use with `ggtalker render --workdir` / `ggtalker eval --workdir`)")
    return 0
