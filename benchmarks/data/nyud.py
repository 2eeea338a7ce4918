"""NYU Depth v2 in the layout of the DINOv2 depth protocol, i.e. the Monocular-Depth-Estimation-Toolbox's NYUDataset
(github.com/zhyever/Monocular-Depth-Estimation-Toolbox: depth/datasets/nyu.py, configs/_base_/datasets/nyu.py,
docs/dataset_prepare.md), which reuses BTS's data: ``<root>/nyu_train.txt`` and ``<root>/nyu_test.txt``, one
sample per line ``/<scene>/rgb_XXXXX.jpg /<scene>/sync_depth_XXXXX.png <focal>`` (paths relative to the root,
leading slash stripped; train scenes are e.g. ``kitchen_0028b``, the 654 test images sit in scene-type folders
such as ``bathroom``), depth PNGs 16-bit in millimetres (depth_scale 1000), valid depth in (1e-3, 10] m. Lines
whose depth path is ``None`` are skipped and samples are sorted by image path, as the toolbox does.

A sample is a dict: ``image`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres (0 = no measurement),
``focal``, ``id``, ``image_path``, ``depth_path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.data.base import LayoutDataset
from benchmarks.data.errors import EmptySplitError, MalformedFileError
from benchmarks.data.layout import check_split, raise_missing, read_split_lines, resolve_root
from benchmarks.data.readers import read_depth_png, read_rgb
from benchmarks.data.specs import DatasetEntry, DatasetSpec, register_dataset

SPEC = DatasetSpec(
    name="nyud",
    description="NYU Depth v2 (BTS / Monocular-Depth-Estimation-Toolbox layout), depth in mm, valid (1e-3, 10] m",
    task="depth",
    n_classes=None,
    ignore_index=0,
    splits=("train", "test"),
    root_name="nyud",
    inner="",
    layout="nyu_train.txt, nyu_test.txt (lines 'rgb_path depth_path focal') and <scene>/{rgb,sync_depth}_*",
    url="https://github.com/zhyever/Monocular-Depth-Estimation-Toolbox/blob/main/docs/dataset_prepare.md",
    archives=(
        "BTS sync.zip (train)",
        "the official labelled test set",
        "splits/nyu_train.txt, splits/nyu_test.txt",
    ),
)
SPLIT_FILES = {"train": "nyu_train.txt", "test": "nyu_test.txt"}
DEPTH_SCALE = 1000.0  # PNG value per metre
MIN_DEPTH, MAX_DEPTH = 1e-3, 10.0  # the evaluation's valid range (metres)
FOCAL = 518.8579  # the toolbox's split files give this focal length (pixels) for every 640x480 image


def parse_split_line(path: Path, number: int, line: str) -> tuple[str, str, float] | None:
    """(rgb, depth, focal) of one split-file line, or None for the toolbox's 'None'-depth lines."""
    fields = line.split()
    if len(fields) < 2:
        raise MalformedFileError(
            SPEC.name, path, f"line {number} {line!r} is not 'rgb_path depth_path focal'", SPEC.fix_hint()
        )
    if fields[1] == "None":
        return None
    try:
        focal = float(fields[2]) if len(fields) > 2 else FOCAL
    except ValueError:
        raise MalformedFileError(
            SPEC.name, path, f"line {number}: focal {fields[2]!r} is not a number"
        ) from None
    return fields[0].lstrip("/\\"), fields[1].lstrip("/\\"), focal


class NYUDepthV2(LayoutDataset):
    spec = SPEC

    def __init__(self, root, split="train", transform=None):
        split = check_split(SPEC, split, aliases={"val": "test"})
        split_name = SPLIT_FILES[split]
        base = resolve_root(SPEC, root, split_name)
        super().__init__(base, split, transform)
        split_path = base / split_name
        entries = [parse_split_line(split_path, n, line) for n, line in read_split_lines(SPEC, split_path)]
        entries = sorted((e for e in entries if e is not None), key=lambda e: e[0])
        if not entries:
            raise EmptySplitError(SPEC.name, split_path, "every line has depth 'None'", SPEC.fix_hint())
        self.samples = [(base / rgb, base / depth, focal) for rgb, depth, focal in entries]
        raise_missing(
            SPEC,
            [p for p, _, _ in self.samples if not p.is_file()],
            "RGB image",
            f"listed in {split_name}",
        )
        raise_missing(
            SPEC,
            [p for _, p, _ in self.samples if not p.is_file()],
            "depth PNG",
            f"listed in {split_name}",
        )

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> dict:
        image_path, depth_path, focal = self.samples[index]
        image = np.asarray(read_rgb(SPEC, image_path))
        depth = read_depth_png(SPEC, depth_path)
        if depth.shape != image.shape[:2]:
            raise MalformedFileError(
                SPEC.name,
                depth_path,
                f"depth map is {depth.shape[1]}x{depth.shape[0]} but its image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]} (WxH)",
                "RGB and depth must be aligned, same size",
            )
        return {
            "image": image,
            "depth": depth.astype(np.float32) / DEPTH_SCALE,
            "focal": focal,
            "id": str(image_path.relative_to(self.root).with_suffix("")),
            "image_path": str(image_path),
            "depth_path": str(depth_path),
        }


register_dataset(DatasetEntry(SPEC, loader=NYUDepthV2, twin="benchmarks.data.synth.nyud", order=3))
