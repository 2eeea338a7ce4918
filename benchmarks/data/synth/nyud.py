"""NYU Depth v2 twin in the toolbox/BTS layout: ``<scene>/rgb_XXXXX.jpg`` + ``<scene>/sync_depth_XXXXX.png`` (16-bit,
millimetres) listed in ``nyu_train.txt`` / ``nyu_test.txt`` as ``/<scene>/rgb_XXXXX.jpg /<scene>/sync_depth_XXXXX.png
<focal>``. Train scenes are numbered (``kitchen_0003``), test images sit in scene-type folders (``kitchen``).

A room: a back wall at one depth and a floor whose depth follows the perspective of a ground plane, with
boxes standing on the floor at the depth of their foot, drawn far to near. Brightness falls with depth and
texture gets finer with distance, so depth is learnable from appearance. Some frames have a hole of 0
(no measurement), as Kinect depth has. The focal length is the toolbox's 518.8579 px scaled to the width.
"""

from __future__ import annotations

import numpy as np

from benchmarks.data.nyud import FOCAL
from benchmarks.data.synth.common import SampleTruth, sample_rng
from benchmarks.data.synth.files import TreeWriter, jpeg_bytes, png_bytes, text_bytes
from benchmarks.data.synth.paint import Layer, Painter, Shape, random_box

WALL, FLOOR = 0, 1
OBJECTS = (2, 3, 4, 5, 6, 7)  # furniture-like classes; NYU depth has no labels, these only set appearance
SCENES = ("bedroom", "kitchen", "living_room", "office", "bathroom")
DEFAULTS = {"n_train": 24, "n_val": 12, "size": (120, 160)}
FRAMES_PER_SCENE = 6


def shade(depth: np.ndarray | float) -> np.ndarray | float:
    return np.clip(1.2 - 0.08 * np.asarray(depth), 0.45, 1.15)


def draw(rng: np.random.Generator, painter: Painter, size: tuple[int, int], focal: float):
    height, width = size
    horizon = int(height * rng.uniform(0.35, 0.55))
    wall_depth, near_depth = rng.uniform(4.0, 8.5), rng.uniform(0.8, 1.5)
    rows = np.arange(height, dtype=np.float64)
    t = np.clip((rows - horizon) / max(height - 1 - horizon, 1), 0.0, 1.0)
    row_depth = np.where(rows < horizon, wall_depth, 1.0 / ((1 - t) / wall_depth + t / near_depth))
    depth = np.repeat(row_depth[:, None], width, axis=1)
    floor = np.zeros(size, bool)
    floor[horizon:] = True
    layers = [
        Layer(~floor, WALL, shade(wall_depth), 2.0 / wall_depth),
        Layer(floor, FLOOR, shade(depth), 1.0),
    ]
    shapes = []
    for _ in range(int(rng.integers(2, 5))):
        foot = int(rng.integers(horizon + 2, height))
        d = float(row_depth[foot])
        h = int(np.clip(rng.uniform(0.5, 1.5) * focal / d, 4, foot))  # metres -> pixels at that depth
        w = int(np.clip(rng.uniform(0.4, 1.2) * focal / d, 4, width - 1))
        x0 = int(rng.integers(0, width - w + 1))
        shapes.append(
            Shape(
                str(rng.choice(["rect", "ellipse"])),
                int(rng.choice(OBJECTS)),
                (foot - h, x0, foot, x0 + w),
                d,
            )
        )
    shapes.sort(key=lambda s: -s.depth)  # far to near, so nearer boxes occlude farther ones
    for s in shapes:
        mask = s.mask(height, width)
        depth[mask] = s.depth
        layers.append(Layer(mask, s.label, shade(s.depth), 2.0 / s.depth))
    image, _ = painter.render(rng, height, width, layers, fill_label=WALL)
    depth_mm = np.round(depth * 1000.0).astype(np.uint16)
    if rng.random() < 0.4:
        y0, x0, y1, x1 = random_box(rng, height, width, (0.05, 0.12))
        depth_mm[y0:y1, x0:x1] = 0
    return image, depth_mm, tuple(shapes)


def write(w: TreeWriter, seed: int, n_train: int, n_val: int, size) -> dict:
    painter = Painter([WALL, FLOOR, *OBJECTS])
    focal = FOCAL * size[1] / 640.0
    truths = {}
    for split, count, list_name in (("train", n_train, "nyu_train.txt"), ("test", n_val, "nyu_test.txt")):
        truths[split], lines = [], []
        for i in range(count):
            rng = sample_rng(seed, "nyud", split, i)
            image, depth_mm, shapes = draw(rng, painter, size, focal)
            kind = SCENES[(i // FRAMES_PER_SCENE) % len(SCENES)]
            scene = f"{kind}_{i // FRAMES_PER_SCENE + 1:04d}" if split == "train" else kind
            rgb, dep = f"{scene}/rgb_{i:05d}.jpg", f"{scene}/sync_depth_{i:05d}.png"
            w.write(rgb, jpeg_bytes(image))
            w.write(dep, png_bytes(depth_mm))
            lines.append(f"/{rgb} /{dep} {focal:.4f}")
            truths[split].append(
                SampleTruth(f"{scene}/rgb_{i:05d}", rgb, dep, depth=depth_mm / 1000.0, shapes=shapes)
            )
        w.write(list_name, text_bytes(lines))
    return truths
