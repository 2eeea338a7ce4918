"""Cityscapes twin: ``leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png`` and
``gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_labelIds.png`` (label ids 0..33).

Street scenes: sky, a building band with trees, road with sidewalks, cars, people, poles with signs; void
ids too (0 unlabeled frame border, 1 ego vehicle, 4 static), which Cityscapes-27 maps to ignore.
"""

from __future__ import annotations

import numpy as np

from benchmarks.data.synth.common import SampleTruth, sample_rng
from benchmarks.data.synth.files import TreeWriter, png_bytes
from benchmarks.data.synth.paint import Layer, Painter, Shape, band_masks, random_box

UNLABELED, EGO, STATIC, ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = (
    0,
    1,
    4,
    7,
    8,
    11,
    17,
    20,
    21,
    23,
    24,
    26,
)
LABELS = [UNLABELED, EGO, STATIC, ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, SKY, PERSON, CAR]
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau", "munster")}
DEFAULTS = {"n_train": 24, "n_val": 12, "size": (112, 224)}


def draw(rng: np.random.Generator, painter: Painter, size: tuple[int, int]):
    height, width = size
    horizon = int(height * rng.uniform(0.3, 0.42))
    street = int(height * rng.uniform(0.5, 0.62))
    layers = [
        Layer(m, b)
        for m, b in zip(band_masks(height, width, [horizon, street, height]), (SKY, BUILDING, ROAD))
    ]
    shapes = []
    for side in (0, 1):  # sidewalks: triangles widening towards the camera on both sides
        x0, x1 = (0, width // 3) if side == 0 else (width - width // 3, width)
        shapes.append(
            Shape(
                "triangle",
                SIDEWALK,
                (street, x0 - (x1 - x0) if side == 0 else x0, height, x1 if side == 0 else x1 + (x1 - x0)),
            )
        )
    for _ in range(int(rng.integers(1, 3))):
        y0, x0, y1, x1 = random_box(rng, height, width, (0.15, 0.3))
        shapes.append(
            Shape("ellipse", VEGETATION, (max(horizon - (y1 - y0) // 2, 0), x0, horizon + (y1 - y0) // 2, x1))
        )
    for _ in range(int(rng.integers(1, 4))):
        h, w = int(height * rng.uniform(0.12, 0.22)), int(width * rng.uniform(0.08, 0.16))
        y1, x0 = int(rng.integers(street + h // 2, height)), int(rng.integers(0, width - w))
        shapes.append(Shape("rect", CAR, (y1 - h, x0, y1, x0 + w)))
    for _ in range(int(rng.integers(0, 3))):
        h, w = int(height * rng.uniform(0.2, 0.3)), max(int(width * 0.03), 3)
        y1, x0 = int(rng.integers(street, height)), int(rng.integers(0, width - w))
        shapes.append(Shape("rect", PERSON, (y1 - h, x0, y1, x0 + w)))
    x = int(rng.integers(4, width - 12))
    top = int(height * rng.uniform(0.15, 0.3))
    shapes.append(Shape("rect", POLE, (top, x, street + 4, x + 2)))
    shapes.append(Shape("rect", SIGN, (top - 6, x - 3, top + 2, x + 5)))
    if rng.random() < 0.3:
        shapes.append(Shape("rect", STATIC, random_box(rng, height, width, (0.08, 0.15))))
    if rng.random() < 0.5:
        shapes.append(
            Shape(
                "ellipse", EGO, (height - height // 8, -width // 4, height + height // 8, width + width // 4)
            )
        )
    layers += [Layer(s.mask(height, width), s.label) for s in shapes]
    frame = np.ones(size, bool)
    frame[2:-2, 2:-2] = False  # the rectification border of real frames is labelled 0
    layers.append(Layer(frame, UNLABELED))
    image, label = painter.render(rng, height, width, layers, fill_label=UNLABELED)
    return image, label.astype(np.uint8), tuple(shapes)


def write(w: TreeWriter, seed: int, n_train: int, n_val: int, size) -> dict:
    painter = Painter(LABELS)
    truths = {}
    for split, count in (("train", n_train), ("val", n_val)):
        truths[split] = []
        cities = CITIES[split]
        for i in range(count):
            rng = sample_rng(seed, "cityscapes", split, i)
            image, label, shapes = draw(rng, painter, size)
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_000019"  # fine annotations are the 20th frame of a snippet
            rel_image = w.write(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", png_bytes(image))
            rel_label = w.write(f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", png_bytes(label))
            truths[split].append(SampleTruth(stem, rel_image, rel_label, label=label, shapes=shapes))
    return truths
