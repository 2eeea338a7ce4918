"""``open_dataset(name, root, split)``: the loader of each registered dataset, imported on first use."""

from __future__ import annotations

import importlib
import os

from benchmarks.data.base import LayoutDataset
from benchmarks.data.specs import get_spec

LOADERS = {
    "imagenet": "benchmarks.data.imagenet:ImageNetFolder",
    "ade20k": "benchmarks.data.ade20k:ADE20k",
    "voc2012": "benchmarks.data.voc2012:VOC2012",
    "nyud": "benchmarks.data.nyud:NYUDepthV2",
    "cityscapes": "benchmarks.data.cityscapes:Cityscapes",
    "potsdam": "benchmarks.data.potsdam:Potsdam",
}


def loader_class(name: str) -> type[LayoutDataset]:
    get_spec(name)  # a clear error for an unknown name
    module, cls = LOADERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


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
