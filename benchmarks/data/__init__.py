"""Dataset layouts of the paper's benchmarks (loaders that validate them) and their synthetic twins.

One registry entry per dataset (``DatasetEntry``: spec, loader, twin; see ``specs.py``). ``DATASETS`` maps each
name to what is known about it; ``open_dataset`` reads one from disk; ``benchmarks.data.synth.write_synthetic``
writes a small synthetic dataset in the same layout.
"""

from benchmarks.data.errors import (
    CorruptFileError,
    DatasetLayoutError,
    EmptySplitError,
    MalformedFileError,
    MissingPathError,
    UnknownDatasetError,
    UnknownSplitError,
)
from benchmarks.data.specs import DATASETS, DatasetEntry, DatasetSpec, get_entry, get_spec, register_dataset


def open_dataset(name, root, split="train", transform=None, **options):
    """See :func:`benchmarks.data.loaders.open_dataset` (imported lazily: it pulls in torch)."""
    from benchmarks.data.loaders import open_dataset as _open

    return _open(name, root, split, transform=transform, **options)


__all__ = [
    "DATASETS",
    "CorruptFileError",
    "DatasetEntry",
    "DatasetLayoutError",
    "DatasetSpec",
    "EmptySplitError",
    "MalformedFileError",
    "MissingPathError",
    "UnknownDatasetError",
    "UnknownSplitError",
    "get_entry",
    "get_spec",
    "open_dataset",
    "register_dataset",
]
