"""ISPRS Potsdam in STEGO's layout (``potsdam.zip`` of STEGO's download_datasets.py, made by IIC's Potsdam script):
``potsdam/imgs/<id>.mat`` (array ``img``: H x W x 4 uint8, R G B IR), ``potsdam/gt/<id>.mat`` (array ``gt``: H x W
class indices 0 roads, 1 buildings, 2 low vegetation, 3 trees, 4 cars, 5 clutter), and id lists
``labelled_train.txt``, ``unlabelled_train.txt`` (images without gt) and ``labelled_test.txt``.

STEGO's splits: train = labelled_train, val = labelled_test, unlabelled_train, train+val. Potsdam-3 merges the six
classes as STEGO does: {roads, cars} -> 0, {buildings, clutter} -> 1, {low vegetation, trees} -> 2; raw 255 ->
ignore (255 here, -1 in STEGO). A sample is a dict: ``image`` (H, W, 3) uint8, ``ir`` (H, W) uint8 when the
file has a 4th channel, ``label`` (H, W) int64 (all ignore for unlabelled images), ``has_label``, ``id``, paths.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.data.base import LayoutDataset
from benchmarks.data.errors import MalformedFileError
from benchmarks.data.layout import check_split, raise_missing, read_split_file, resolve_root
from benchmarks.data.readers import check_label_values, read_mat
from benchmarks.data.segmentation import label_table
from benchmarks.data.specs import DatasetEntry, DatasetSpec, register_dataset

POTSDAM_3 = ("roads and cars", "buildings and clutter", "vegetation and trees")

SPEC = DatasetSpec(
    name="potsdam",
    description="ISPRS Potsdam-3 in STEGO's layout (6 classes merged into 3)",
    task="segmentation",
    n_classes=3,
    ignore_index=255,
    splits=("train", "unlabelled_train", "val", "train+val"),
    root_name="potsdam",
    inner="potsdam",
    layout="potsdam/{imgs/<id>.mat, gt/<id>.mat, labelled_train.txt, unlabelled_train.txt, labelled_test.txt}",
    url="https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/potsdam.zip",
    archives=("as STEGO's download_datasets.py fetches it",),
    class_names=POTSDAM_3,
)
SPLIT_FILES = {
    "train": ("labelled_train.txt",),
    "unlabelled_train": ("unlabelled_train.txt",),
    "val": ("labelled_test.txt",),
    "train+val": ("labelled_train.txt", "labelled_test.txt"),
}
FINE_CLASSES = ("roads", "buildings", "low vegetation", "trees", "cars", "clutter")
FINE_TO_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: 255}


def _as_uint8_image(path: Path, img: np.ndarray) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise MalformedFileError(
            SPEC.name, path, f"'img' has shape {img.shape}, expected H x W x 4 (RGB + IR)"
        )
    if img.dtype.kind == "f" and img.size and 0.0 <= img.min() and img.max() <= 1.0:
        return np.round(img * 255.0).astype(
            np.uint8
        )  # a float image in [0, 1], as to_pil_image would read it
    if img.dtype.kind in "ui" and img.size and img.min() >= 0 and img.max() <= 255:
        return img.astype(np.uint8)
    raise MalformedFileError(SPEC.name, path, f"'img' has dtype {img.dtype} with values outside 0..255")


class Potsdam(LayoutDataset):
    spec = SPEC

    def __init__(self, root, split="train", transform=None, coarse: bool = True):
        split = check_split(SPEC, split, aliases={"test": "val"})
        base = resolve_root(SPEC, root, "imgs")
        super().__init__(base, split, transform)
        ids = []
        for name in SPLIT_FILES[split]:
            ids += read_split_file(SPEC, base / name)
        self.labelled = split != "unlabelled_train"
        self.samples = [(i, base / "imgs" / f"{i}.mat", base / "gt" / f"{i}.mat") for i in ids]
        listed = " + ".join(SPLIT_FILES[split])
        raise_missing(
            SPEC,
            [p for _, p, _ in self.samples if not p.is_file()],
            "image .mat file",
            f"listed in {listed}",
        )
        if self.labelled:
            raise_missing(
                SPEC,
                [p for _, _, p in self.samples if not p.is_file()],
                "gt .mat file",
                f"for an image listed in {listed}",
            )
        self.coarse = coarse
        mapping = FINE_TO_COARSE if coarse else {**{i: i for i in range(6)}, 255: 255}
        self.allowed, self.lut = label_table(mapping)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> dict:
        sample_id, image_path, label_path = self.samples[index]
        img = _as_uint8_image(image_path, read_mat(SPEC, image_path, "img", "image .mat"))
        sample = {"image": np.ascontiguousarray(img[..., :3]), "id": sample_id, "image_path": str(image_path)}
        if img.shape[2] == 4:
            sample["ir"] = np.ascontiguousarray(img[..., 3])
        if self.labelled:
            raw = read_mat(SPEC, label_path, "gt", "gt .mat")
            if raw.shape != img.shape[:2]:
                raise MalformedFileError(
                    SPEC.name,
                    label_path,
                    f"'gt' has shape {raw.shape}, its image {image_path} is {img.shape[:2]}",
                    "image and gt must be the same size",
                )
            check_label_values(SPEC, label_path, raw, self.allowed)
            sample.update(label=self.lut[raw.astype(np.int64)], has_label=True, label_path=str(label_path))
        else:
            sample.update(
                label=np.full(img.shape[:2], SPEC.ignore_index, np.int64), has_label=False, label_path=""
            )
        return sample


register_dataset(DatasetEntry(SPEC, loader=Potsdam, twin="benchmarks.data.synth.potsdam", order=5))
