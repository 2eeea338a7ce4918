"""Deterministic stand-ins for photographs: smooth colour fields with a few blobs and a little noise.

Used where a repair needs images but no image folder exists (the smoke suite, tests). Each image differs, so
which tokens a defective model flags depends on the input, as it does on real photographs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def synthetic_photo(rng: np.random.Generator, size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0, 1, 3)[None, None] * (0.5 + 0.5 * np.stack([xx, yy, 1 - xx], -1))
    for _ in range(3):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        radius = rng.uniform(0.05, 0.2)
        base[((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2] = rng.uniform(0, 1, 3)
    noisy = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    return Image.fromarray((noisy * 255).astype(np.uint8))


def synthetic_photos(count: int, size: int = 128, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [synthetic_photo(rng, size) for _ in range(count)]


def write_synthetic_photos(folder: str | Path, count: int, size: int = 128, seed: int = 0) -> Path:
    """``count`` PNG files ``img_000.png`` ... in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(synthetic_photos(count, size, seed)):
        img.save(folder / f"img_{i:03d}.png")
    return folder
