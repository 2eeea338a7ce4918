"""What every synthetic-twin writer shares: per-sample random streams and the record of what was drawn."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.data.synth.paint import Shape


@dataclass
class SampleTruth:
    """Ground truth of one generated sample, for tests and sanity checks (paths relative to the twin's root)."""

    id: str
    image: str
    target: str | None = None  # annotation / depth file, None for unlabelled samples and ImageNet
    cls: int | None = None  # ImageNet class index
    label: np.ndarray | None = None  # raw label map exactly as written to the annotation file
    depth: np.ndarray | None = None  # metres, exactly as written (mm / 1000)
    shapes: tuple[Shape, ...] = field(default=())


def sample_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
    """An independent stream per (seed, dataset, split, sample): sample i does not depend on how many others
    were drawn, so changing n_train leaves the first samples unchanged."""
    key = [seed, zlib.crc32(dataset.encode()), zlib.crc32(split.encode()), index]
    return np.random.default_rng(key)
