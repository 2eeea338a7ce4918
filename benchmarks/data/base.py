"""The shape every dataset loader shares: an indexed list of samples read lazily, a transform, and ``verify``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from benchmarks.data.specs import DatasetSpec


class LayoutDataset(Dataset):
    """Base of the loaders. Subclasses check the layout in ``__init__`` and decode one sample in ``load``.

    The constructor only lists and stats files, so opening a real dataset is quick; decoding errors surface
    from ``__getitem__`` (or from ``verify``, which decodes everything up front).
    """

    spec: DatasetSpec

    def __init__(self, root: Path, split: str, transform: Callable[[Any], Any] | None = None):
        self.root = root
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(
                f"{self.spec.name} {self.split}: index {index} out of range for {len(self)} samples"
            )
        sample = self.load(index % len(self))
        return self.transform(sample) if self.transform is not None else sample

    def verify(self) -> int:
        """Decode every sample (raising the first layout error); returns the number of samples checked."""
        for index in range(len(self)):
            self.load(index)
        return len(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={str(self.root)!r})"
