"""The `ggtalker` command: `ggtalker [--verbose] SUBCOMMAND [--flags]`.

Each subcommand is a module of this package exposing `main(argv) -> int` (flags, input checks, then the
library call); this file dispatches, importing the chosen module lazily so `ggtalker --help` stays fast,
and is the one error path of the whole command line: an error the user can fix
(`ggtalker_jax.errors.GGTalkerError`) is printed as one line naming the file or flag, what is wrong and
the fix, and the process exits with that error's code (table in `ggtalker_jax.errors`); anything else
prints one line too and exits 1. `--verbose` (or `GGTALKER_VERBOSE=1`) adds the traceback. Everything
the commands write is private to the user (files 0600, directories 0700).
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback

from ggtalker_jax.cli.flags import parse_flags  # noqa: F401  (re-exported for the launchers)

SUBCOMMANDS = {
    "prepare": ("ggtalker_jax.cli.prepare", "Turn a talking video into a prepared dataset."),
    "adapt": ("ggtalker_jax.cli.adapt", "Adapt the priors to one prepared subject (5 stages)."),
    "render": ("ggtalker_jax.cli.render", "Make an adapted subject say new audio: writes an mp4."),
    "demo": ("ggtalker_jax.cli.demo", "End to end on the built-in default subject."),
    "eval": ("ggtalker_jax.cli.eval", "Self-reconstruction / cross-id / cross-language report."),
    "watermark": ("ggtalker_jax.cli.watermark", "Detect or embed the provenance watermark."),
}
EXIT_INTERNAL = 1


def usage() -> str:
    lines = ["usage: ggtalker [--verbose] SUBCOMMAND [--flags]   (ggtalker SUBCOMMAND --help for its flags)", ""]
    lines += [f"  {name:<10} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    from ggtalker_jax.errors import GGTalkerError
    from ggtalker_jax.files import private_umask

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = os.environ.get("GGTALKER_VERBOSE", "") not in ("", "0")
    while argv and argv[0] in ("--verbose", "-v"):
        verbose = True
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ggtalker: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    prog = f"ggtalker {name}"
    try:
        with private_umask():
            module = importlib.import_module(SUBCOMMANDS[name][0])
            return int(module.main([prog, *rest]) or 0)
    except GGTalkerError as e:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:      # --help (0) and flag errors (2), already printed
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; a rerun with the same flags continues where it stopped", file=sys.stderr)
        return 130
    except (OSError, ValueError) as e:
        if verbose:
            traceback.print_exc()
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"{prog}: error: {_one_line(e)}{where}", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as e:  # noqa: BLE001  (a bug: say so in one line, traceback with --verbose)
        if verbose:
            traceback.print_exc()
        print(f"{prog}: internal error: {type(e).__name__}: {_one_line(e)} (rerun with --verbose for the "
              "traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
