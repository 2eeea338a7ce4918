"""Dataset layouts of the paper's benchmarks (loaders that validate them) and their synthetic twins.

``DATASETS`` lists what is known about each dataset; ``open_dataset`` reads one from disk;
``benchmarks.data.synth.write_synthetic`` writes a small synthetic dataset in the same layout.
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
from benchmarks.data.specs import DATASETS, DatasetSpec, get_spec


def open_dataset(name, root, split="train", transform=None, **options):
    """See :func:`benchmarks.data.loaders.open_dataset` (imported lazily: it pulls in torch)."""
    from benchmarks.data.loaders import open_dataset as _open

    return _open(name, root, split, transform=transform, **options)


__all__ = [
    "DATASETS",
    "CorruptFileError",
    "DatasetLayoutError",
    "DatasetSpec",
    "EmptySplitError",
    "MalformedFileError",
    "MissingPathError",
    "UnknownDatasetError",
    "UnknownSplitError",
    "get_spec",
    "open_dataset",
]
