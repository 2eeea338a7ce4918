"""ADE20k SceneParsing as released (ADEChallengeData2016.zip), the layout mmsegmentation's ADE20KDataset reads:
``ADEChallengeData2016/images/{training,validation}/ADE_*.jpg`` and ``annotations/.../ADE_*.png`` (uint8,
0 = other, 1..150 = classes). With ``reduce_zero_label`` (mmseg's setting for ADE20k) targets are 0..149 and
the "other" pixels become 255 (ignored).
"""

from __future__ import annotations

from benchmarks.data.errors import EmptySplitError
from benchmarks.data.layout import check_split, list_files, raise_missing, require_dir, resolve_root
from benchmarks.data.segmentation import SegmentationPairs, label_table
from benchmarks.data.specs import DatasetEntry, DatasetSpec, register_dataset

SPEC = DatasetSpec(
    name="ade20k",
    description="ADE20k SceneParsing (ADEChallengeData2016), 150 classes, label 0 = other (reduce_zero_label)",
    task="segmentation",
    n_classes=150,
    ignore_index=255,
    splits=("train", "val"),
    root_name="ade20k",
    inner="ADEChallengeData2016",
    layout="ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}",
    url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
)
SPLIT_DIRS = {"train": "training", "val": "validation"}


class ADE20k(SegmentationPairs):
    spec = SPEC
    label_modes = ("L", "P")

    def __init__(self, root, split="train", transform=None, reduce_zero_label: bool = True):
        split = check_split(SPEC, split)
        base = resolve_root(SPEC, root, "images")
        sub = SPLIT_DIRS[split]
        image_dir = require_dir(SPEC, base / "images" / sub, f"{split} image")
        label_dir = require_dir(SPEC, base / "annotations" / sub, f"{split} annotation")
        images = {name.rsplit(".", 1)[0]: name for name in list_files(image_dir, (".jpg",))}
        labels = {name.rsplit(".", 1)[0]: name for name in list_files(label_dir, (".png",))}
        if not images:
            raise EmptySplitError(
                SPEC.name, image_dir, "no ADE_*.jpg images in the split folder", SPEC.fix_hint()
            )
        raise_missing(
            SPEC,
            [label_dir / f"{s}.png" for s in sorted(images) if s not in labels],
            "annotation PNG",
            "for an image of the split",
        )
        raise_missing(
            SPEC,
            [image_dir / f"{s}.jpg" for s in sorted(labels) if s not in images],
            "image",
            "for an annotation PNG of the split",
        )
        pairs = [(s, image_dir / images[s], label_dir / labels[s]) for s in sorted(images)]
        if reduce_zero_label:
            table = label_table({0: 255, **{v: v - 1 for v in range(1, 151)}})
        else:
            table = label_table({v: v for v in range(151)})
        self.reduce_zero_label = reduce_zero_label
        super().__init__(base, split, pairs, table, transform)


register_dataset(DatasetEntry(SPEC, loader=ADE20k, twin="benchmarks.data.synth.ade20k", order=1))
