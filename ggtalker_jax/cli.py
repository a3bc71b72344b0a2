"""The `ggtalker` command: `ggtalker SUBCOMMAND [--flags]`.

Each subcommand lives in the module that owns its concept and exposes `main(argv) -> int`; this file
only dispatches, importing the chosen module lazily so `ggtalker --help` stays fast. Flags are absl flags
parsed into a per-subcommand `FlagValues` (no process-global flag state).
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "prepare": ("ggtalker_jax.data.ingest", "Turn a talking video into a prepared dataset."),
    "adapt": ("ggtalker_jax.train.adapt", "Adapt the priors to one prepared subject (5 stages)."),
    "render": ("ggtalker_jax.infer", "Make an adapted subject say new audio: writes an mp4."),
    "demo": ("ggtalker_jax.demo", "End to end on the built-in default subject."),
    "eval": ("ggtalker_jax.eval.protocol", "Self-reconstruction / cross-id / cross-language report."),
    "watermark": ("ggtalker_jax.watermark.cli", "Detect or embed the provenance watermark."),
}


def parse_flags(flag_values, argv: list[str]) -> list[str]:
    """Parses `argv` (argv[0] = program name) into absl `flag_values`; handles --help and bad flags.

    Returns the positional arguments (without argv[0]). Exits with status 0 after --help and 2 after a
    flag error, printing which flag is wrong and the subcommand's flags.
    """
    from absl import flags

    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(f"usage: {argv[0]} [--flags]\n")
        print(flag_values.get_help())
        raise SystemExit(0)
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        print(f"{argv[0]}: {e}\n\n{flag_values.get_help()}", file=sys.stderr)
        raise SystemExit(2) from None
    return rest[1:]


def usage() -> str:
    lines = ["usage: ggtalker SUBCOMMAND [--flags]   (ggtalker SUBCOMMAND --help for its flags)", ""]
    lines += [f"  {name:<10} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ggtalker: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main([f"ggtalker {name}", *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())
