"""The dataset registry: one :class:`DatasetEntry` per dataset, holding what it is (:class:`DatasetSpec`: the
facts ``sinder-bench ls`` lists and loaders put in their messages), its loader and its synthetic twin.

Each dataset is one module of this package (``benchmarks/data/<name>.py``: its spec, its loader class and
``register_dataset(DatasetEntry(...))``) plus its twin writer ``benchmarks/data/synth/<name>.py``; the modules
are found without a central list on first use. ``DATASETS`` (name -> spec), ``open_dataset``,
``write_synthetic``, ``sinder-bench data`` and ``sinder-bench ls`` all read this one registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from benchmarks.core.registry_helper import Registry
from benchmarks.data.errors import UnknownDatasetError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    task: str  # "classification" | "segmentation" | "depth"
    n_classes: int | None  # classes of the target the loader returns (None for depth)
    ignore_index: int | None  # target value that means "not evaluated" (0-depth pixels for depth)
    splits: tuple[str, ...]
    root_name: str  # default folder under a data directory, e.g. data/ade20k
    inner: str  # where the official archive's layout starts inside the root ("" = the root itself)
    layout: str  # the expected tree, shown in error messages
    url: str  # where the official data comes from
    archives: tuple[str, ...] = ()  # what to fetch there
    class_names: tuple[str, ...] = field(default=(), repr=False)

    def fix_hint(self) -> str:
        what = f" ({', '.join(self.archives)})" if self.archives else ""
        return f"get the official data{what} from {self.url} and unpack it so that <root> holds {self.layout}"


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: its spec, its loader (a ``LayoutDataset`` subclass: ``loader(root, split, transform,
    **options)``) and its synthetic twin (the module path of a writer with ``DEFAULTS`` and ``write``)."""

    spec: DatasetSpec
    loader: type
    twin: str
    order: int = 100  # place in listings (ls, --dataset all): the paper's order

    @property
    def name(self) -> str:
        return self.spec.name

    def twin_module(self) -> ModuleType:
        return importlib.import_module(self.twin)


def _discover_datasets() -> None:
    # Every module of this folder (read from the file system: importing the package here would be a circle):
    # one without a dataset registers nothing; a broken loader is an error, not hidden.
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.ispkg and info.name != "commands":
            importlib.import_module(f"{package}.{info.name}")


_ENTRIES: dict[str, DatasetEntry] = {}
# Looked up through a lambda: a test may swap ``_ENTRIES`` for a copy and register a dataset into that.
REGISTRY = Registry(
    "dataset",
    table=lambda: _ENTRIES,
    discover=_discover_datasets,
    plural="known datasets",
    error=UnknownDatasetError,
    sort=lambda entry: entry.order,
    same=lambda old, new: old == new,  # registering the same entry again is no error
)
register_dataset = REGISTRY.register
DATASETS = REGISTRY.view(lambda entry: entry.spec)  # name -> DatasetSpec


def get_entry(name: str) -> DatasetEntry:
    return REGISTRY.get(name)


def get_spec(name: str) -> DatasetSpec:
    return get_entry(name).spec
