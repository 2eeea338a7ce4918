"""Checks of a dataset folder's structure, cheap enough for ImageNet's 1.28M files (listings, no decoding)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from benchmarks.data.errors import EmptySplitError, MalformedFileError, MissingPathError, UnknownSplitError
from benchmarks.data.specs import DatasetSpec

SHOW = 3  # how many offending paths a message lists before summarizing the rest


def resolve_root(spec: DatasetSpec, root: str | os.PathLike, marker: str) -> Path:
    """The folder where the layout starts: ``root/spec.inner`` or ``root`` itself when it already is that folder.

    ``marker`` is a child every valid layout has; it tells which of the two the user pointed at.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingPathError(spec.name, root, "dataset root folder does not exist", spec.fix_hint())
    if not spec.inner:
        return root  # nothing to choose; the loader's own checks name what is missing
    for candidate in (root / spec.inner, root):
        if (candidate / marker).exists():
            return candidate
    raise MissingPathError(
        spec.name,
        root / spec.inner / marker,
        "dataset root does not contain the expected layout",
        spec.fix_hint(),
    )


def check_split(spec: DatasetSpec, split: str, aliases: dict[str, str] | None = None) -> str:
    split = (aliases or {}).get(split, split)
    if split not in spec.splits:
        raise UnknownSplitError(spec.name, split, f"unknown split (known: {', '.join(spec.splits)})")
    return split


def require_dir(spec: DatasetSpec, path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingPathError(spec.name, path, f"missing {what} folder", spec.fix_hint())
    return path


def require_file(spec: DatasetSpec, path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingPathError(spec.name, path, f"missing {what}", spec.fix_hint())
    return path


def read_split_lines(spec: DatasetSpec, path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a split file; an absent or empty file is an error."""
    require_file(spec, path, "split file")
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise MalformedFileError(spec.name, path, f"split file is not text ({err})", spec.fix_hint()) from err
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise EmptySplitError(spec.name, path, "split file lists no samples", spec.fix_hint())
    return lines


def read_split_file(spec: DatasetSpec, path: Path) -> list[str]:
    """Non-blank, stripped lines of a split file (ids, one per line)."""
    return [line for _, line in read_split_lines(spec, path)]


def list_files(folder: Path, suffixes: Iterable[str]) -> list[str]:
    """Sorted names of the plain files in ``folder`` whose lower-cased name ends with one of ``suffixes``."""
    suffixes = tuple(s.lower() for s in suffixes)
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(suffixes))


def raise_missing(spec: DatasetSpec, missing: list[Path], what: str, context: str) -> None:
    """Raise one error naming the first missing path, a few more, and how many in all."""
    if not missing:
        return
    detail = ""
    if len(missing) > 1:
        shown = ", ".join(str(p) for p in missing[1:SHOW])
        rest = len(missing) - SHOW
        detail = f"{len(missing)} missing in all; also {shown}" + (f" and {rest} more" if rest > 0 else "")
    raise MissingPathError(spec.name, missing[0], f"missing {what} {context}", spec.fix_hint(), detail)
