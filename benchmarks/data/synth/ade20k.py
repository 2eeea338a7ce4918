"""ADE20k twin: ``ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_{train,val}_XXXXXXXX.{jpg,png}``.

Indoor scenes (ceiling / wall / floor bands + furniture) and outdoor scenes (sky / building or tree / road or
grass + cars, people, plants), with some "other" (0) regions, drawn with a subset of the 150 ADE labels.
"""

from __future__ import annotations

import numpy as np

from benchmarks.data.synth.common import SampleTruth, sample_rng
from benchmarks.data.synth.files import TreeWriter, jpeg_bytes, png_bytes
from benchmarks.data.synth.paint import Layer, Painter, band_masks, random_shape

# ADE20k annotation values (1-based, 0 = other)
OTHER, WALL, BUILDING, SKY, FLOOR, TREE, CEILING, ROAD, BED, WINDOW, GRASS = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
CABINET, PERSON, DOOR, TABLE, PLANT, CHAIR, CAR = 11, 13, 15, 16, 18, 20, 21
INDOOR_OBJECTS = (BED, WINDOW, CABINET, PERSON, DOOR, TABLE, PLANT, CHAIR)
OUTDOOR_OBJECTS = (CAR, PERSON, TREE, PLANT)
LABELS = [
    OTHER,
    WALL,
    BUILDING,
    SKY,
    FLOOR,
    TREE,
    CEILING,
    ROAD,
    BED,
    WINDOW,
    GRASS,
    CABINET,
    PERSON,
    DOOR,
    TABLE,
    PLANT,
    CHAIR,
    CAR,
]
DEFAULTS = {"n_train": 24, "n_val": 12, "size": (128, 160)}
SPLITS = {"train": ("training", "train"), "val": ("validation", "val")}


def draw(rng: np.random.Generator, painter: Painter, size: tuple[int, int]):
    height, width = size
    indoor = rng.random() < 0.5
    first = int(height * rng.uniform(0.15, 0.4))
    second = int(height * rng.uniform(0.5, 0.7))
    if indoor:
        bands, objects = (CEILING, WALL, FLOOR), INDOOR_OBJECTS
    else:
        bands = (SKY, BUILDING if rng.random() < 0.5 else TREE, ROAD if rng.random() < 0.5 else GRASS)
        objects = OUTDOOR_OBJECTS
    layers = [Layer(m, b) for m, b in zip(band_masks(height, width, [first, second, height]), bands)]
    shapes = [random_shape(rng, height, width, rng.choice(objects)) for _ in range(int(rng.integers(2, 5)))]
    if rng.random() < 0.5:
        shapes.append(random_shape(rng, height, width, OTHER, frac=(0.1, 0.2)))
    layers += [Layer(s.mask(height, width), s.label) for s in shapes]
    image, label = painter.render(rng, height, width, layers, fill_label=OTHER)
    return image, label.astype(np.uint8), tuple(shapes)


def write(w: TreeWriter, seed: int, n_train: int, n_val: int, size) -> dict:
    painter = Painter(LABELS)
    truths = {}
    for split, count in (("train", n_train), ("val", n_val)):
        folder, tag = SPLITS[split]
        truths[split] = []
        for i in range(count):
            rng = sample_rng(seed, "ade20k", split, i)
            image, label, shapes = draw(rng, painter, size)
            name = f"ADE_{tag}_{i + 1:08d}"
            rel_image = w.write(f"ADEChallengeData2016/images/{folder}/{name}.jpg", jpeg_bytes(image))
            rel_label = w.write(f"ADEChallengeData2016/annotations/{folder}/{name}.png", png_bytes(label))
            truths[split].append(SampleTruth(name, rel_image, rel_label, label=label, shapes=shapes))
    return truths
