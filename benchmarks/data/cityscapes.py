"""Cityscapes fine annotations as released: ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (label ids 0..33; 0..6 are void classes).

``labels="27"`` (default) gives Cityscapes-27 as STEGO defines it: target = label id - 7 (the first non-void
id), void ids -> ignore. STEGO marks them -1; we use 255 so every dataset shares one ignore value (both lie
outside [0, 27), which is all the unsupervised metrics look at). ``labels="raw"`` returns the label ids.
"""

from __future__ import annotations

import os

from benchmarks.data.errors import EmptySplitError
from benchmarks.data.layout import check_split, list_files, raise_missing, require_dir, resolve_root
from benchmarks.data.segmentation import SegmentationPairs, label_table
from benchmarks.data.specs import DatasetEntry, DatasetSpec, register_dataset

CITYSCAPES_27 = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)

SPEC = DatasetSpec(
    name="cityscapes",
    description="Cityscapes fine annotations; Cityscapes-27 for STEGO/CAUSE (label ids shifted by 7)",
    task="segmentation",
    n_classes=27,
    ignore_index=255,
    splits=("train", "val"),
    root_name="cityscapes",
    inner="",
    layout="leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png",
    url="https://www.cityscapes-dataset.com/downloads/",
    archives=("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip", "free registration"),
    class_names=CITYSCAPES_27,
)
FIRST_NON_VOID = 7
N_LABEL_IDS = 34  # ids 0..33 occur in labelIds PNGs (the -1 "license plate" id never does)
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(SegmentationPairs):
    spec = SPEC
    label_modes = ("L", "P")

    def __init__(self, root, split="train", transform=None, labels: str = "27"):
        split = check_split(SPEC, split)
        if labels not in ("27", "raw"):
            raise ValueError(f"cityscapes: labels must be '27' or 'raw', got {labels!r}")
        base = resolve_root(SPEC, root, "leftImg8bit")
        image_root = require_dir(SPEC, base / "leftImg8bit" / split, f"{split} image")
        label_root = require_dir(SPEC, base / "gtFine" / split, f"{split} gtFine annotation")
        with os.scandir(image_root) as entries:
            cities = sorted(e.name for e in entries if e.is_dir())
        if not cities:
            raise EmptySplitError(SPEC.name, image_root, "no city folders in the split", SPEC.fix_hint())
        pairs = []
        for city in cities:
            for name in list_files(image_root / city, (IMAGE_SUFFIX,)):
                stem = name[: -len(IMAGE_SUFFIX)]
                pairs.append((stem, image_root / city / name, label_root / city / f"{stem}{LABEL_SUFFIX}"))
        if not pairs:
            raise EmptySplitError(
                SPEC.name, image_root, f"no *{IMAGE_SUFFIX} images in the split", SPEC.fix_hint()
            )
        raise_missing(
            SPEC,
            [p for _, _, p in pairs if not p.is_file()],
            "gtFine labelIds PNG",
            "for an image of the split",
        )
        if labels == "27":
            table = label_table(
                {i: (i - FIRST_NON_VOID if i >= FIRST_NON_VOID else 255) for i in range(N_LABEL_IDS)}
            )
        else:
            table = label_table({i: i for i in range(N_LABEL_IDS)})
        self.labels = labels
        super().__init__(base, split, pairs, table, transform)


register_dataset(DatasetEntry(SPEC, loader=Cityscapes, twin="benchmarks.data.synth.cityscapes", order=4))
