"""``logging`` for sinder and the benchmarks: the ``sinder`` and ``benchmarks`` loggers, configured once by the CLI.

Modules log through ``logging.getLogger(__name__)``. :func:`configure` gives the two package loggers the plain
lines the tool has always printed (the bare message; INFO on stdout as ``print`` had it, debug lines, warnings and errors on stderr);
:func:`log_to_file` adds a run's log file as one more handler for as long as the run lasts.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("sinder", "benchmarks")
PLAIN = "%(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _CurrentStream(logging.StreamHandler):
    """Writes to whatever ``sys.stdout``/``sys.stderr`` is at the time of the record (so that redirections,
    pytest's capture included, see the lines, as they saw ``print``)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property
    def stream(self):
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the live stream wins
        pass


def _info(record: logging.LogRecord) -> bool:
    return logging.INFO <= record.levelno < logging.WARNING


def _not_info(record: logging.LogRecord) -> bool:
    return not _info(record)


def configure(level: int = logging.INFO) -> None:
    """The CLI's logging: idempotent (a second call replaces the handlers of the first)."""
    out, err = _CurrentStream("stdout"), _CurrentStream("stderr")
    out.addFilter(_info)
    err.addFilter(_not_info)
    for handler in (out, err):  # on the handlers too: a log file may lower the loggers' level, not the console's
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter(PLAIN))
        handler._sinder_console = True  # marks the handlers a later configure() replaces
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_sinder_console", False)]:
            logger.removeHandler(old)
        logger.addHandler(out)
        logger.addHandler(err)
        logger.setLevel(level)


def ensure_console(level: int = logging.INFO) -> None:
    """:func:`configure` unless logging is already set up (handlers on our loggers or on the root logger): library
    calls such as ``run_suite`` print their lines by default and leave a caller's own logging alone."""
    if logging.getLogger().handlers or any(
        getattr(h, "_sinder_console", False) or not isinstance(h, logging.FileHandler)
        for name in PACKAGES for h in logging.getLogger(name).handlers
    ):
        return
    configure(level)


@contextlib.contextmanager
def log_to_file(path: str | Path, level: int = logging.DEBUG) -> Iterator[logging.Handler]:
    """Also write every ``sinder``/``benchmarks`` record to ``path`` (appended, time-stamped) inside the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    loggers = [logging.getLogger(name) for name in PACKAGES]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > level:  # the file gets what the console may hide
            logger.setLevel(level)
    try:
        yield handler
    finally:
        for logger, old in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(old)
        handler.close()
