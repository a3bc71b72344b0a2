"""Writing files safely: atomic replacement, private permissions, and directory locks.

What ggtalker-jax writes holds a person's face and voice (datasets, checkpoints, videos), so it is
written private to the user: files 0600, directories 0700 (`private_umask`). Whole files appear
atomically (temp file + rename) so a crash never leaves half a file under the real name, and a
directory that a long command owns is locked (`DirectoryLock`) so two commands never write it at once.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from typing import Any

from ggtalker_jax.errors import RefusedError

PRIVATE_UMASK = 0o077


@contextlib.contextmanager
def private_umask():
    """Within the block, new files are created 0600 and new directories 0700 (process umask 077)."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temp file in the same directory and a rename."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())


class DirectoryLock:
    """An exclusive advisory lock on a directory (a `.lock` file inside it, `fcntl.flock`), held while a
    command writes the directory. A second command asking for it gets `RefusedError` at once (no wait).
    The lock is released when the process exits, even on a crash, so it never goes stale.
    `lock_file` puts the lock elsewhere (e.g. beside a directory that is created atomically at the end).

        with DirectoryLock(workdir, "ggtalker adapt"):
            ...
    """

    def __init__(self, directory: str | os.PathLike, what: str = "another command",
                 lock_file: str | os.PathLike | None = None):
        self.directory = os.fspath(directory)
        self.what = what
        self.lock_file = os.fspath(lock_file) if lock_file else os.path.join(self.directory, ".lock")
        self._fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        import fcntl

        os.makedirs(os.path.dirname(os.path.abspath(self.lock_file)), exist_ok=True)
        path = self.lock_file
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = ""
                with contextlib.suppress(OSError):
                    holder = open(path).read().strip()
                raise RefusedError(f"{self.directory} is in use by {holder or 'another ggtalker command'}; wait "
                                   "for it to finish or use another directory") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{self.what} (pid {os.getpid()})".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
