"""``open_dataset(name, root, split)``: the loader of each registered dataset (its ``DatasetEntry``)."""

from __future__ import annotations

import os

from benchmarks.data.base import LayoutDataset
from benchmarks.data.specs import REGISTRY, get_entry

# name -> "module:Class" of each loader, read from the registry (the entries hold the classes).
LOADERS = REGISTRY.view(lambda entry: f"{entry.loader.__module__}:{entry.loader.__qualname__}")


def loader_class(name: str) -> type[LayoutDataset]:
    return get_entry(name).loader  # UnknownDatasetError naming the known datasets


def open_dataset(
    name: str, root: str | os.PathLike, split: str = "train", transform=None, **options
) -> LayoutDataset:
    """Open ``split`` of dataset ``name`` stored at ``root`` (the folder holding the official layout).

    The layout is checked now (folders, split files, image/annotation pairs); files are decoded lazily by
    ``__getitem__`` or all at once by ``verify()``. Options per dataset: ade20k ``reduce_zero_label=True``,
    cityscapes ``labels="27"|"raw"``, potsdam ``coarse=True``. Raises a ``DatasetLayoutError`` subclass naming
    the dataset, the path and the fix when the folder does not match.
    """
    return loader_class(name)(root, split, transform=transform, **options)
