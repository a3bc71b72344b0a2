"""Flag parsing for the `ggtalker` subcommands and the experiment launchers: absl flags in a per-command
`FlagValues` (no process-global flag state), underscores in every flag name, `--help` listing them all,
and checks that turn a bad value into a `UsageError` naming the flag and the fix."""
from __future__ import annotations

import math
import os
import sys

from ggtalker_jax.errors import UsageError


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


def require(flag_values, *names: str) -> None:
    """UsageError naming the missing ones among the string flags `names`."""
    missing = [n for n in names if not getattr(flag_values, n)]
    if missing:
        raise UsageError("missing " + ", ".join(f"--{n}" for n in missing))


def no_positional(rest: list[str]) -> None:
    if rest:
        raise UsageError(f"unexpected arguments {rest}; every input is given by a --flag (see --help)")


def positive(name: str, value, minimum: float = 0.0, inclusive: bool = False, integer: bool = False):
    """`value` when it is a finite number > minimum (>= with `inclusive`), else a UsageError for --name."""
    if value is None:
        return value
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (
        value >= minimum if inclusive else value > minimum)
    if not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise UsageError(f"--{name} {value}: must be a finite {'integer' if integer else 'number'} {bound}")
    return value


def existing_file(name: str, path: str | None, what: str = "file") -> str | None:
    if path is not None and not os.path.isfile(path):
        raise UsageError(f"--{name} {path}: file not found (give the path of an existing {what})")
    return path


def define_head_model_flags(flag_values) -> None:
    """--head / --landmark_embedding of the commands that read a prepared dataset or an adapted workdir:
    new paths of the recorded head model's files (when they moved; their content must be the recorded one)."""
    from absl import flags

    flags.DEFINE_string("head", None, "the head model's file when it moved since `ggtalker prepare` (FLAME's "
                        "generic_model.pkl; default: the path recorded with the data)", flag_values=flag_values)
    flags.DEFINE_string("landmark_embedding", None, "the FLAME landmark embedding .npz when it moved (default: "
                        "the recorded path)", flag_values=flag_values)


def head_model_files(flag_values) -> None:
    """UsageError when --head / --landmark_embedding name a file that does not exist."""
    if flag_values.head not in (None, "open"):
        existing_file("head", flag_values.head, "head model file (FLAME's generic_model.pkl)")
    existing_file("landmark_embedding", flag_values.landmark_embedding, "landmark embedding .npz")


def writable_output_dir(name: str, path: str) -> str:
    """Checks that directory `path` can be created or written (before any long work)."""
    target = os.path.abspath(path)
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"--{name} {path}: exists and is not a directory; choose a directory path")
    parent = target
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--{name} {path}: cannot write there ({parent} is not a writable directory)")
    return path


def writable_output_file(name: str, path: str, overwrite: bool, inputs: tuple[str, ...] = ()) -> str:
    """Checks an output file path before any long work: not one of the `inputs`, not an existing file
    unless `overwrite`, and in a writable directory."""
    from ggtalker_jax.errors import RefusedError

    target = os.path.realpath(path)
    for other in inputs:
        if other and os.path.exists(other) and os.path.realpath(other) == target:
            raise RefusedError(f"--{name} {path} is also an input of this command; choose another output path")
    if os.path.isdir(target):
        raise UsageError(f"--{name} {path}: is a directory; give a file path (e.g. {os.path.join(path, 'out.mp4')})")
    if os.path.exists(target) and not overwrite:
        raise RefusedError(f"--{name} {path} already exists; pass --overwrite to replace it, or choose another path")
    writable_output_dir(name, os.path.dirname(target) or ".")
    return path
