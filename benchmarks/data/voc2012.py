"""PASCAL VOC 2012 segmentation as released (VOCtrainval_11-May-2012.tar): ``VOCdevkit/VOC2012/JPEGImages/<id>.jpg``,
``SegmentationClass/<id>.png`` (palette PNGs: the pixel value is the class index 0..20, 255 = boundary) and
the id lists ``ImageSets/Segmentation/{train,val,trainval}.txt``.
"""

from __future__ import annotations

from benchmarks.data.layout import check_split, raise_missing, read_split_file, resolve_root
from benchmarks.data.segmentation import SegmentationPairs, label_table
from benchmarks.data.specs import DatasetEntry, DatasetSpec, register_dataset

VOC_21 = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

SPEC = DatasetSpec(
    name="voc2012",
    description="PASCAL VOC 2012 segmentation, 21 classes, 255 = object boundary (ignored)",
    task="segmentation",
    n_classes=21,
    ignore_index=255,
    splits=("train", "val", "trainval"),
    root_name="voc2012",
    inner="VOCdevkit/VOC2012",
    layout="VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/*.txt}",
    url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    class_names=VOC_21,
)


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC palette: the bits of the class index spread over the high bits of R, G and B."""
    colours = []
    for index in range(n):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


class VOC2012(SegmentationPairs):
    spec = SPEC
    label_modes = ("P", "L")  # the release is palette PNGs; a grayscale index PNG carries the same values

    def __init__(self, root, split="train", transform=None):
        split = check_split(SPEC, split)
        base = resolve_root(SPEC, root, "ImageSets")
        ids = read_split_file(SPEC, base / "ImageSets" / "Segmentation" / f"{split}.txt")
        pairs = [(i, base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in ids]
        raise_missing(SPEC, [p for _, p, _ in pairs if not p.is_file()], "image", f"listed in {split}.txt")
        raise_missing(
            SPEC,
            [p for _, _, p in pairs if not p.is_file()],
            "annotation PNG",
            f"for an image listed in {split}.txt",
        )
        super().__init__(base, split, pairs, label_table({**{v: v for v in range(21)}, 255: 255}), transform)


register_dataset(DatasetEntry(SPEC, loader=VOC2012, twin="benchmarks.data.synth.voc2012", order=2))
