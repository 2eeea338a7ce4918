"""Feeding training batches: item keys -> stacked tensors, through a DataLoader when images must be decoded.

A key is an item index, or an ``(index, positive index)`` pair for STEGO. When the tokens come from the cache
only the keys are needed (no decoding); when the backbone runs online the images are decoded by the
DataLoader's workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .data import SegmentationView


class KeyedItems(Dataset):
    """``view`` items addressed by key: ``i`` -> the item; ``(i, j)`` -> item i plus ``pos_image`` of item j."""

    def __init__(self, view: SegmentationView):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            index, positive = key
            item = self.view[int(index)]
            item["positive"] = int(positive)
            item["pos_image"] = self.view[int(positive)]["image"]
            return item
        return self.view[int(key)]


def keys_only(batches: Sequence[Sequence]) -> Iterator[dict]:
    for batch in batches:
        if batch and isinstance(batch[0], (tuple, list)):
            yield {
                "index": torch.tensor([int(k[0]) for k in batch]),
                "positive": torch.tensor([int(k[1]) for k in batch]),
            }
        else:
            yield {"index": torch.tensor([int(k) for k in batch])}


def iterate(view: SegmentationView, batches: Sequence[Sequence], load_images: bool, num_workers: int = 0):
    """Batches as dicts (``index`` [, ``positive``] and, when ``load_images``, ``image``, ``label``, ...)."""
    if not load_images:
        return keys_only(batches)
    batches = [list(b) for b in batches]
    return iter(DataLoader(KeyedItems(view), batch_sampler=batches, num_workers=num_workers))
