"""Kill-safe exclusive claims and scratch folders for runs that share an output or cache folder.

A claim is an ``flock`` on a small lock file: the kernel drops it when its process ends, even on ``kill -9``, so
a claim can never be left behind by a dead run. Concurrent runs into one folder claim each run identity before
working on it and skip what another live process holds. Scratch folders (the run's temp directory) carry a
claim of their own, so the next run removes the folders of killed runs and leaves those of live ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class Claim:
    """An exclusive claim on ``path`` (a lock file), held until :meth:`release` or the process ends."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True when this process now holds the claim; False when another live process does."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {platform.node()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock; the file stays (deleting it races)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def scratch_dir(parent: str | Path, name: str) -> Iterator[Path]:
    """A temp folder ``parent/name`` for one run, used as the process's temp directory while it runs.

    Removed at the end; a killed run's folder is removed by the next run that starts under ``parent``.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(parent)
    folder = parent / name
    claim = Claim(parent / f".{name}.lock")
    claim.acquire()
    folder.mkdir(exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(folder, ignore_errors=True)
        claim.release()
        Path(claim.path).unlink(missing_ok=True)


def remove_abandoned(parent: Path) -> list[Path]:
    """Remove scratch folders under ``parent`` whose run no longer holds their claim; return them."""
    removed = []
    for folder in sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
        claim = Claim(parent / f".{folder.name}.lock")
        if claim.acquire():
            shutil.rmtree(folder, ignore_errors=True)
            claim.release()
            claim.path.unlink(missing_ok=True)
            removed.append(folder)
    return removed
