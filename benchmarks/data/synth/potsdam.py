"""Potsdam twin in STEGO's layout: ``potsdam/imgs/<id>.mat`` (``img``: H x W x 4 uint8, RGB + IR),
``potsdam/gt/<id>.mat`` (``gt``: H x W int32, classes 0..5) for labelled images, and the id lists
``labelled_train.txt``, ``unlabelled_train.txt``, ``labelled_test.txt``. Ids are a shuffled range, as IIC's
preparation script numbers its tiles. ``n_train`` images are labelled and as many unlabelled.

Aerial tiles: roads or low vegetation as ground, buildings (rectangles), trees (ellipses), cars (small
rectangles) and clutter; vegetation is bright in the IR channel, as in real near-infrared.
"""

from __future__ import annotations

import numpy as np

from benchmarks.data.synth.common import SampleTruth, sample_rng
from benchmarks.data.synth.files import TreeWriter, mat_bytes, text_bytes
from benchmarks.data.synth.paint import Layer, Painter, random_shape

ROADS, BUILDINGS, LOW_VEGETATION, TREES, CARS, CLUTTER = range(6)
DEFAULTS = {"n_train": 24, "n_val": 12, "size": (112, 112)}
SPLIT_FILES = {
    "train": "labelled_train.txt",
    "unlabelled_train": "unlabelled_train.txt",
    "val": "labelled_test.txt",
}


def draw(rng: np.random.Generator, painter: Painter, size: tuple[int, int]):
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    angle = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.3, 0.3) * min(size)
    road = (xx - width / 2) * np.cos(angle) + (yy - height / 2) * np.sin(angle) < offset
    layers = [Layer(np.ones(size, bool), LOW_VEGETATION), Layer(road, ROADS)]
    shapes = [random_shape(rng, height, width, BUILDINGS, frac=(0.3, 0.5), kinds=("rect",))]
    shapes += [
        random_shape(rng, height, width, TREES, frac=(0.12, 0.25), kinds=("ellipse",))
        for _ in range(int(rng.integers(1, 4)))
    ]
    shapes += [
        random_shape(rng, height, width, CARS, frac=(0.06, 0.1), kinds=("rect",), aspect=(0.4, 0.6))
        for _ in range(int(rng.integers(0, 4)))
    ]
    if rng.random() < 0.5:
        shapes.append(random_shape(rng, height, width, CLUTTER, frac=(0.08, 0.15)))
    layers += [Layer(s.mask(height, width), s.label) for s in shapes]
    rgb, label = painter.render(rng, height, width, layers, fill_label=LOW_VEGETATION)
    vegetation = (label == LOW_VEGETATION) | (label == TREES)
    ir = np.where(vegetation, 200.0, 70.0) + rng.normal(0, 8, size)
    img = np.concatenate([rgb, np.clip(np.round(ir), 0, 255).astype(np.uint8)[..., None]], axis=2)
    return img, label.astype(np.int32), tuple(shapes)


def write(w: TreeWriter, seed: int, n_train: int, n_val: int, size) -> dict:
    painter = Painter(list(range(6)))
    counts = {"train": n_train, "unlabelled_train": n_train, "val": n_val}
    names = np.random.default_rng([seed, 2]).permutation(sum(counts.values()))
    truths, ids, k = {}, {}, 0
    for split, count in counts.items():
        truths[split], ids[split] = [], []
        for i in range(count):
            rng = sample_rng(seed, "potsdam", split, i)
            img, label, shapes = draw(rng, painter, size)
            sample_id = str(names[k])
            k += 1
            rel_image = w.write(f"potsdam/imgs/{sample_id}.mat", mat_bytes({"img": img}))
            rel_label = None
            if split != "unlabelled_train":
                rel_label = w.write(f"potsdam/gt/{sample_id}.mat", mat_bytes({"gt": label}))
            truth = SampleTruth(
                sample_id, rel_image, rel_label, label=label if rel_label else None, shapes=shapes
            )
            truths[split].append(truth)
            ids[split].append(sample_id)
    for split, name in SPLIT_FILES.items():
        w.write(f"potsdam/{name}", text_bytes(ids[split]))
    return truths
