"""What every ``sinder-bench`` verb shares: the parent parsers of the common options, the one backbone grammar and
the one usage error.

Each verb builds its parser from these parents (``subparsers.add_parser(..., parents=[backbone_parent(),
out_parent(...)])``, the way DINOv2's evaluation ``setup.py`` shares its arguments), so ``--backbone``, ``--out``,
``--device``, ``--force`` and ``--seed`` mean the same everywhere. Every action made here carries
``shared_option`` (its option's name), which the tests check on every verb.

Errors: a verb raises :class:`UsageError` (or lets one of :data:`KNOWN_ERRORS` through); the CLI's ``main`` turns
it into one line, ``error: <message>``, on stderr and exit 2 (:func:`run_verb`).
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sinder.utils.atomic import writable_problem
from sinder.utils.device import device_problem

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- errors


class UsageError(Exception):
    """Bad input the user can fix (a flag, a file, a folder): ``error: <message>`` on stderr, exit ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = str(message)
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


# The library's "bad input" errors (a missing or unreadable file, a bad value, an unknown name), named here once:
# whichever verb meets one, the user gets its message and exit 2, not a traceback. The benchmarks' own error
# classes (LaunchError, ReportError, CompareError, RecordError, DatasetLayoutError) are ValueErrors.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, FileExistsError,
                                                 PermissionError)  # fmt: skip


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# How torch.save's C++ writer says that a write failed (it raises a RuntimeError without an errno)
_WRITE_FAILED = ("file write failed", "basic_ios::clear", "iostream error")


def as_usage_error(err: BaseException) -> UsageError | None:
    """``err`` as a :class:`UsageError`, or None when it is not a usage error (a bug: let it raise)."""
    if isinstance(err, UsageError):
        return err
    if isinstance(err, OSError) and err.errno in _DISK_FULL:  # a write that still failed: one line, not a traceback
        where = f" writing {err.filename}" if err.filename else ""
        return UsageError(f"{err.strerror or err}{where}: free some space (or choose another folder) and rerun; "
                          "with --resume a run goes on where it stopped")  # fmt: skip
    if isinstance(err, RuntimeError) and any(m in str(err) for m in _WRITE_FAILED):  # torch.save on a full disk
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        return UsageError(f"writing a file failed ({first}): is the disk full? Free some space and rerun; with "
                          "--resume a run goes on where it stopped")  # fmt: skip
    if isinstance(err, KNOWN_ERRORS):
        # str(KeyError("x")) is "'x'" with the quotes; the message is the argument
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        return UsageError(str(message))
    return None


def run_verb(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Call a verb; a usage error becomes ``error: <message>`` on stderr (one line, no traceback) and its exit
    code. The traceback still goes to the log at DEBUG (``sinder-bench -v``)."""
    try:
        return int(func(args) or 0)
    except Exception as err:
        usage = as_usage_error(err)
        if usage is None:
            raise
        logger.debug("%s: %s", type(err).__name__, err, exc_info=True)
        print(f"error: {usage.message}", file=sys.stderr)
        return usage.exit_code


# ------------------------------------------------------------------------------------- backbone grammar
BACKBONE_HELP = (
    "NAME, NAME:WEIGHTS or PATH: a preset (dinov2_vitg14, its official weights from the torch hub cache) or a "
    "constructed backbone (dinov2_tiny_defective, clip_tiny_defective, siglip_tiny_defective); that architecture with a weights file (.safetensors or .pth); "
    "or a JSON/YAML config, or a checkpoint that says its own architecture (a Hugging Face folder, an official or "
    "timm weights file)"
)
RUN_BACKBONE_HELP = (
    f"[LABEL=]SPEC[+REMEDY[:ARGS]], repeatable; SPEC as for every verb: {BACKBONE_HELP}; e.g. dinov2_vitg14 or "
    "sinder=dinov2_vitg14:sinder.safetensors or dinov2_vitg14+clamp:gamma=5"
)
WEIGHTS_DEPRECATED = "--weights is deprecated: write --backbone NAME:WEIGHTS"


def split_backbone(text: str) -> tuple[str, str | None]:
    """``NAME`` -> (NAME, None); ``NAME:WEIGHTS`` -> (NAME, WEIGHTS); ``PATH`` -> (PATH, None); ("", ...) when
    there is no name (the caller says so in its own terms).

    The grammar of every verb; ``run`` (``benchmarks.core.backbones.parse_backbone_spec``) adds ``LABEL=`` before
    it and ``+REMEDY`` after it. An existing file or folder is a PATH even when its name holds a ':'.
    """
    raw = str(text).strip()
    if raw and Path(raw).exists():
        return raw, None
    name, _, weights = raw.partition(":")
    return name.strip(), (weights.strip() or None)


def resolve_backbone(args: argparse.Namespace) -> tuple[str, str | None]:
    """(name, weights) of a verb's ``--backbone`` (and the deprecated ``--weights``); also written back into
    ``args.backbone`` and ``args.weights``."""
    name, weights = split_backbone(args.backbone)
    if not name:
        raise UsageError(f"--backbone {args.backbone!r}: expected NAME, NAME:WEIGHTS or PATH, e.g. dinov2_vitg14 "
                         "or dinov2_vitg14:sinder.safetensors")  # fmt: skip
    legacy = getattr(args, "weights", None)
    if legacy is not None:
        if weights is not None:
            raise UsageError(f"--backbone {args.backbone} already names a weights file; drop --weights {legacy}")
        weights = str(legacy)
    args.backbone, args.weights = name, weights
    return name, weights


class _DeprecatedWeights(argparse.Action):
    """``--weights PATH``: still read (users' scripts pass it), with a warning that names the new spelling."""

    def __call__(self, parser, namespace, values, option_string=None):
        logger.warning("warning: %s, e.g. --backbone %s:%s", WEIGHTS_DEPRECATED,
                       getattr(namespace, "backbone", None) or "NAME", values)  # fmt: skip
        setattr(namespace, self.dest, values)


# ------------------------------------------------------------------------------------- parent parsers
def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _shared(action: argparse.Action, option: str) -> argparse.Action:
    action.shared_option = option  # what the tests look for on every verb
    return action


def backbone_parent(*, repeatable: bool = False) -> argparse.ArgumentParser:
    """``--backbone SPEC`` (required) and the deprecated ``--weights``; ``repeatable``: run's form, which also
    takes a label and a remedy, repeats, and has no ``--weights``."""
    parser = _parent()
    if repeatable:
        _shared(parser.add_argument("--backbone", action="append", default=None, metavar="SPEC",
                                    help=RUN_BACKBONE_HELP), "backbone")  # fmt: skip
        return parser
    _shared(parser.add_argument("--backbone", required=True, metavar="SPEC", help=BACKBONE_HELP), "backbone")
    _shared(parser.add_argument("--weights", action=_DeprecatedWeights, default=None, metavar="PATH",
                                help="deprecated: write --backbone NAME:WEIGHTS"), "weights")  # fmt: skip
    return parser


def out_parent(help: str, *, default: str | Path | None = None, required: bool = False,
               type: Callable[[str], Any] | None = None) -> argparse.ArgumentParser:  # fmt: skip
    """``--out``: what it is differs by verb (a file, a folder), so the verb says it in ``help``."""
    parser = _parent()
    kwargs = {"required": True} if required else {"default": default}
    _shared(parser.add_argument("--out", type=type, help=help, **kwargs), "out")
    return parser


def device_parent() -> argparse.ArgumentParser:
    parser = _parent()
    _shared(parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"),
            "device")  # fmt: skip
    return parser


def check_device(text: str | None) -> None:
    """:func:`device_problem` as a :class:`UsageError`."""
    problem = device_problem(text)
    if problem:
        raise UsageError(problem)




def check_writable(folder: str | Path, what: str) -> None:
    """:func:`writable_problem` as a :class:`UsageError`."""
    problem = writable_problem(folder, what)
    if problem:
        raise UsageError(problem)


def force_parent() -> argparse.ArgumentParser:
    parser = _parent()
    _shared(parser.add_argument("--force", action="store_true", help="overwrite an existing --out"), "force")
    return parser


def seed_parent() -> argparse.ArgumentParser:
    parser = _parent()
    _shared(parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)"), "seed")
    return parser


SHARED_OPTIONS = ("--backbone", "--weights", "--out", "--device", "--force", "--seed")
