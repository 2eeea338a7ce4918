"""ImageNet splits for the classification probes: ``benchmarks.data``'s loader plus an image transform.

``benchmarks.data.open_dataset`` validates the layout and yields ``(PIL image, class index)``; the wrapper here
applies the probe's image transform and gives the dataset a fingerprint for feature-cache keys.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from sinder.utils.hashing import new_digest


class TransformedImages(Dataset):
    """``(transform(image), label)`` over a dataset of ``(image, label)``."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return self.transform(image), int(label)

    @property
    def classes(self) -> list[str]:
        return list(getattr(self.base, "classes", []))

    def fingerprint(self) -> str:
        """The file list and labels (relative to the dataset root); cheap even for 1.28M files (no stat)."""
        samples = getattr(self.base, "samples", None)
        root = str(getattr(self.base, "root", ""))
        split = getattr(self.base, "split", "")
        if samples is None:
            return f"{type(self.base).__name__}:{split}:{len(self.base)}"
        digest = new_digest()
        for path, label in samples:
            digest.update(f"{str(path).removeprefix(root)}|{label}\n".encode())
        return f"{type(self.base).__name__}:{split}:{len(samples)}:{digest.hexdigest()[:16]}"


def open_imagenet(root: str | Path, split: str, transform: Callable) -> TransformedImages:
    """Split ``split`` of the ImageNet layout at ``root`` (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``)."""
    from benchmarks.data import open_dataset

    return TransformedImages(open_dataset("imagenet", root, split), transform)

