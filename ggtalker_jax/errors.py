"""Errors of ggtalker-jax, one class per kind of failure a user can fix, each with its CLI exit code.

Every message names the offending file or flag, says what is wrong and how to fix it. The `ggtalker`
command prints such an error as one line (the traceback only with `--verbose`) and exits with the class's
`exit_code`; library callers catch them like any exception (`MediaError`, `DatasetError`, `ConfigError`
and `WorkdirError` are also `ValueError`s, so generic bad-input handlers keep working).

    exit code  class
    2          UsageError       a flag is missing, malformed or out of range
    3          MediaError       an audio/video file is missing, corrupt, empty or unusable
    4          DatasetError     a prepared dataset directory is incomplete or inconsistent
    5          WorkdirError     an adapted workdir (or a prior-training run directory) is unusable
    6          PriorsError      a priors folder is missing or corrupt
    7          RefusedError     the command refuses to destroy data (existing output, locked directory)
    8          TrainingError    training diverged (non-finite loss); the last good checkpoint is kept
"""
from __future__ import annotations


class GGTalkerError(Exception):
    """Base class: a failure the user can fix; `str(e)` is the whole message."""
    exit_code = 1


class UsageError(GGTalkerError, ValueError):
    """A flag or argument is missing, malformed or out of range."""
    exit_code = 2


class MediaError(GGTalkerError, ValueError):
    """A media file (audio/video) is missing, corrupt, empty or otherwise unusable."""
    exit_code = 3


class DatasetError(GGTalkerError, ValueError):
    """A prepared dataset directory is missing files or holds inconsistent data."""
    exit_code = 4


class WorkdirError(GGTalkerError, ValueError):
    """An adapted workdir or a training run directory is missing, corrupt or belongs to other data."""
    exit_code = 5


class PriorsError(GGTalkerError, ValueError):
    """A priors folder is missing or holds corrupt or mismatched weights."""
    exit_code = 6


class RefusedError(GGTalkerError):
    """The command would overwrite or delete something that is not recognisably its own, or the target
    is locked by another running command."""
    exit_code = 7


class TrainingError(GGTalkerError, FloatingPointError):
    """Training stopped because the loss became NaN/Inf; the newest checkpoint is the last good one."""
    exit_code = 8


def check_finite(name: str, value: float, fix: str = "") -> float:
    """Returns float(value), raising `UsageError` naming `name` when it is NaN or infinite."""
    import math
    v = float(value)
    if not math.isfinite(v):
        raise UsageError(f"{name}: {value!r} is not a finite number{'; ' + fix if fix else ''}")
    return v
