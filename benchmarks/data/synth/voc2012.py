"""VOC2012 twin: ``VOCdevkit/VOC2012/JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNGs, VOC
colormap) and ``ImageSets/Segmentation/{train,val,trainval}.txt``.

A textured background (class 0) with two to four objects of the 20 classes, each outlined by a band of 255
(VOC's "boundary / difficult" label) that straddles its edge.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

from benchmarks.data.synth.common import SampleTruth, sample_rng
from benchmarks.data.synth.files import TreeWriter, jpeg_bytes, png_bytes, text_bytes
from benchmarks.data.synth.paint import Layer, Painter, random_shape
from benchmarks.data.voc2012 import voc_colormap

BOUNDARY = 255
DEFAULTS = {"n_train": 24, "n_val": 12, "size": (120, 160)}
BASE = "VOCdevkit/VOC2012"


def draw(rng: np.random.Generator, painter: Painter, size: tuple[int, int]):
    height, width = size
    shapes = tuple(
        random_shape(rng, height, width, int(rng.integers(1, 21)), frac=(0.3, 0.6))
        for _ in range(int(rng.integers(2, 5)))
    )
    layers = [Layer(np.ones(size, bool), 0)] + [Layer(s.mask(height, width), s.label) for s in shapes]
    image, label = painter.render(rng, height, width, layers, fill_label=0)
    boundary = np.zeros(size, bool)
    for layer in layers[1:]:
        visible = label == layer.label  # outline what is visible of the class, as VOC's annotators did
        boundary |= binary_dilation(visible) & ~binary_erosion(visible, border_value=1)
    label = label.astype(np.uint8)
    label[boundary] = BOUNDARY
    return image, label, shapes


def write(w: TreeWriter, seed: int, n_train: int, n_val: int, size) -> dict:
    painter = Painter(list(range(21)))
    colormap = voc_colormap()
    truths, ids = {}, {}
    for split, count, offset in (("train", n_train, 0), ("val", n_val, n_train)):
        truths[split], ids[split] = [], []
        for i in range(count):
            rng = sample_rng(seed, "voc2012", split, i)
            image, label, shapes = draw(rng, painter, size)
            k = offset + i
            sample_id = f"{2007 + k % 5}_{k + 1:06d}"  # VOC ids are <year>_<6 digits>
            rel_image = w.write(f"{BASE}/JPEGImages/{sample_id}.jpg", jpeg_bytes(image))
            rel_label = w.write(
                f"{BASE}/SegmentationClass/{sample_id}.png", png_bytes(label, palette=colormap)
            )
            truths[split].append(SampleTruth(sample_id, rel_image, rel_label, label=label, shapes=shapes))
            ids[split].append(sample_id)
    for split in ("train", "val"):
        w.write(f"{BASE}/ImageSets/Segmentation/{split}.txt", text_bytes(sorted(ids[split])))
    w.write(f"{BASE}/ImageSets/Segmentation/trainval.txt", text_bytes(sorted(ids["train"] + ids["val"])))
    return truths
