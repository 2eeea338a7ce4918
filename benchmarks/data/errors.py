"""Errors raised when a dataset folder does not match the layout its loader expects.

Every message names the dataset, the offending path, what is wrong, and how to fix it, so that a user who
pointed ``--data`` at the wrong folder (or whose download was interrupted) knows what to do next.
"""

from __future__ import annotations

from pathlib import Path


class DatasetLayoutError(ValueError):
    """A dataset folder is missing something or holds a malformed file."""

    def __init__(
        self, dataset: str, path: str | Path, problem: str, fix: str | None = None, detail: str = ""
    ):
        self.dataset = dataset
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        message = f"{dataset}: {problem}: {self.path}" + (f" ({detail})" if detail else "")
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)


class MissingPathError(DatasetLayoutError):
    """A folder or file the layout requires does not exist (e.g. an image without its annotation)."""


class EmptySplitError(DatasetLayoutError):
    """A split file or split folder exists but lists no samples."""


class MalformedFileError(DatasetLayoutError):
    """A file decodes but its content breaks the layout (bad split line, wrong PNG mode, label out of range)."""


class CorruptFileError(DatasetLayoutError):
    """A file exists but cannot be decoded (truncated or damaged image, unreadable .mat)."""


class UnknownSplitError(DatasetLayoutError):
    """The requested split is not one the dataset defines."""


class UnknownDatasetError(ValueError):
    """No dataset of that name is registered."""
