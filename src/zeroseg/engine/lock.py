"""An exclusive lock on a directory, so two processes never write one run or stage at once.

Below :mod:`zeroseg.engine.rundir` (which imports the config) so the trainer can take it too.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


class DirectoryInUseError(ValueError):
    """Another process holds the directory's lock."""


@contextmanager
def hold_lock(directory: Path) -> Iterator[None]:
    """Holds ``directory/.lock`` exclusively for the duration; a second holder fails at once."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise DirectoryInUseError(
                f"{directory} is in use by another zeroseg run (pid {holder}); wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
