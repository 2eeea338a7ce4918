"""Shared loader for datasets of (RGB image, class-index PNG) pairs: ADE20k, VOC2012, Cityscapes.

A sample is a dict: ``image`` (H, W, 3) uint8, ``label`` (H, W) int64 in the dataset's target space
(ignore pixels = ``spec.ignore_index``), ``id``, ``image_path``, ``label_path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.data.base import LayoutDataset
from benchmarks.data.errors import MalformedFileError
from benchmarks.data.readers import check_label_values, read_label_png, read_rgb


def label_table(mapping: dict[int, int], default: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(allowed, lut) for uint8 label PNGs: ``allowed[v]`` says whether raw value v may occur, ``lut[v]`` is its
    target value. Values absent from ``mapping`` are allowed only when ``default`` is given."""
    allowed = np.zeros(256, dtype=bool)
    lut = np.full(256, -1 if default is None else default, dtype=np.int64)
    if default is not None:
        allowed[:] = True
    for raw, target in mapping.items():
        allowed[raw] = True
        lut[raw] = target
    return allowed, lut


class SegmentationPairs(LayoutDataset):
    label_modes: tuple[str, ...] = ("L", "P")

    def __init__(self, root: Path, split: str, pairs: list[tuple[str, Path, Path]], table, transform=None):
        super().__init__(root, split, transform)
        self.pairs = pairs  # (id, image path, label path)
        self.allowed, self.lut = table

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> dict:
        sample_id, image_path, label_path = self.pairs[index]
        image = np.asarray(read_rgb(self.spec, image_path))
        raw = read_label_png(self.spec, label_path, self.label_modes)
        if raw.shape != image.shape[:2]:
            raise MalformedFileError(
                self.spec.name,
                label_path,
                f"label is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]} (WxH)",
                "image and annotation must be the same size",
            )
        check_label_values(self.spec, label_path, raw, self.allowed)
        return {
            "image": image,
            "label": self.lut[raw],
            "id": sample_id,
            "image_path": str(image_path),
            "label_path": str(label_path),
        }
