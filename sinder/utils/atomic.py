"""Atomic file writes: a crash mid-write leaves the previous file (or none), never a truncated one.

Every temporary file or folder is named with :func:`temp_prefix` (host and process id of its writer), so the
temps a killed process left behind can be told from those of a live one and removed by the next run
(:func:`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# ".<name>.tmp-<host>-<pid>-<random>[suffix]"; host reduced to [A-Za-z0-9_] so the pattern parses back.
_MARK = re.compile(r"\.tmp-([A-Za-z0-9_]+)-(\d+)-")
STALE_AFTER_S = 24 * 3600.0  # temps of another host (whose processes cannot be asked) older than this are stale


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def temp_prefix(name: str) -> str:
    """Prefix of a temporary file or folder standing in for ``name`` (pass it to mkstemp / mkdtemp)."""
    return f".{name[:100]}.tmp-{_host()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell: keep it)
    return True


def is_stale_temp(path: Path, now: float | None = None, max_age_s: float = STALE_AFTER_S) -> bool:
    """True for a temp of :func:`temp_prefix` whose writer is gone: a dead process of this host, or (another
    host's, or a live pid that may have been reused) untouched for ``max_age_s``."""
    match = _MARK.search(path.name)
    if not path.name.startswith(".") or match is None:
        return False
    host, pid = match.group(1), int(match.group(2))
    if host == _host() and pid != os.getpid() and not _pid_alive(pid):
        return True
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    return age > max_age_s


def remove_stale_temps(folder: str | Path, *, recursive: bool = True, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the stale temps (:func:`is_stale_temp`) in ``folder`` (and below); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for top, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            path = Path(top) / name
            if not is_stale_temp(path, now, max_age_s):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue  # another process cleaned it first
            except OSError:
                continue  # not ours to remove (permissions): leave it
            removed.append(path)
        dirs[:] = [d for d in dirs if (Path(top) / d).exists()] if recursive else []
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", *, replace: bool = True) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success it replaces ``path``, on error it is removed.
    With ``replace=False`` an existing ``path`` is never replaced: FileExistsError (a hard link, atomic).

    The temporary file is flushed to disk (fsync) before the rename, so a crash never leaves ``path`` naming
    an empty or partial file. The final file gets ordinary permissions (0666 minus the umask), not mkstemp's
    private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            Path(tmp).unlink()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def writable_problem(folder: str | Path, what: str) -> str | None:
    """None when files can be written into ``folder`` (created if missing; nothing is left behind), else the
    problem in one line. An existing folder is probed with a temporary file: ``os.access`` says yes on a
    read-only mount."""
    folder = Path(folder).expanduser()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{what} {folder} is not writable: {probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{what} {folder} is not writable ({probe}: permission denied or read-only); choose another folder"
    if probe == folder:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as err:
            return f"{what} {folder} is not writable ({err.strerror or err}); choose another folder"
    return None


def free_space_problem(folder: str | Path, need_bytes: int, what: str) -> str | None:
    """None when the file system of ``folder`` (or its nearest existing parent) has ``need_bytes`` free, else
    the problem: a run that would fill the disk stops before its work, not after it."""
    probe = Path(folder).expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return None  # cannot tell: the write itself will say
    if free >= need_bytes:
        return None
    return (f"{what} {folder}: {free / 2**20:.0f} MiB free, the run writes about {need_bytes / 2**20:.0f} MiB; "
            "free some space or choose another folder")
