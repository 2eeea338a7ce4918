"""ImageNet twin: ``train/<wnid>/<wnid>_<n>.JPEG`` and ``val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG``.

Each class is its colour/texture filling the frame with a darker, differently textured object of the same
class in it, plus a distractor blob of a random colour. ``n_train`` and ``n_val`` count images per class.
"""

from __future__ import annotations

import numpy as np

from benchmarks.data.synth.common import SampleTruth, sample_rng
from benchmarks.data.synth.files import TreeWriter, jpeg_bytes
from benchmarks.data.synth.paint import Layer, Painter, random_shape

# The first ILSVRC2012 classes in wnid order (tench, goldfish, ..., chickadee).
WNIDS = (
    "n01440764",
    "n01443537",
    "n01484850",
    "n01491361",
    "n01494475",
    "n01496331",
    "n01498041",
    "n01514668",
    "n01514859",
    "n01518878",
    "n01530575",
    "n01531178",
    "n01532829",
    "n01534433",
    "n01537544",
    "n01558993",
    "n01560419",
    "n01580077",
    "n01582220",
    "n01592084",
)
DEFAULTS = {"n_train": 12, "n_val": 4, "size": (128, 160), "n_classes": 10}


def draw(rng: np.random.Generator, painter: Painter, cls: int, size: tuple[int, int]):
    height, width = size
    full = np.ones(size, bool)
    obj = random_shape(rng, height, width, cls, frac=(0.35, 0.6))
    blob = random_shape(rng, height, width, cls, frac=(0.1, 0.2), kinds=("ellipse",))
    layers = [
        Layer(full, cls),
        Layer(obj.mask(height, width), cls, shade=0.55, scale=2.0),
        Layer(blob.mask(height, width), None, colour=tuple(rng.uniform(30, 225, 3))),
    ]
    image, _ = painter.render(rng, height, width, layers, fill_label=cls)
    return image, (obj,)


def write(w: TreeWriter, seed: int, n_train: int, n_val: int, size, n_classes: int = 10) -> dict:
    if not 1 <= n_classes <= len(WNIDS):
        raise ValueError(f"imagenet twin: n_classes must be in 1..{len(WNIDS)}, got {n_classes}")
    painter = Painter(list(range(n_classes)))
    truths: dict[str, list[SampleTruth]] = {"train": [], "val": []}
    # val images are numbered over the whole split in a shuffled order, as ILSVRC2012_val_* are
    val_numbers = np.random.default_rng([seed, 1]).permutation(n_classes * n_val) + 1
    for cls, wnid in enumerate(WNIDS[:n_classes]):
        for split, count in (("train", n_train), ("val", n_val)):
            for i in range(count):
                rng = sample_rng(seed, "imagenet", split, cls * 100_000 + i)
                image, shapes = draw(rng, painter, cls, size)
                if split == "train":
                    name = f"{wnid}_{i + 1}"
                else:
                    name = f"ILSVRC2012_val_{val_numbers[cls * n_val + i]:08d}"
                rel = w.write(f"{split}/{wnid}/{name}.JPEG", jpeg_bytes(image))
                truths[split].append(SampleTruth(id=name, image=rel, cls=cls, shapes=shapes))
    return truths
