"""ImageNet-1k in class folders: ``<root>/{train,val}/<wnid>/<image>``.

Class index = position of the wnid in the sorted list of the train folders, as torchvision's ImageFolder
assigns it; val must have the same class folders, or its indices would silently shift.
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.data.base import LayoutDataset
from benchmarks.data.errors import EmptySplitError, MalformedFileError
from benchmarks.data.layout import check_split, list_files, raise_missing, require_dir, resolve_root
from benchmarks.data.readers import read_rgb
from benchmarks.data.specs import DatasetEntry, DatasetSpec, register_dataset

SPEC = DatasetSpec(
    name="imagenet",
    description="ImageNet-1k (ILSVRC2012) classification, class folders named by WordNet id",
    task="classification",
    n_classes=1000,
    ignore_index=None,
    splits=("train", "val"),
    root_name="imagenet",
    inner="",
    layout="train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted into class folders by valprep.sh)",
    url="https://image-net.org/challenges/LSVRC/2012/2012-downloads.php",
    archives=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # ImageNet ships .JPEG; case differs between mirrors


def _class_folders(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


class ImageNetFolder(LayoutDataset):
    """Samples are ``(PIL RGB image, class index)``; ``classes``, ``class_to_idx``, ``samples`` and ``targets``
    mirror torchvision's ImageFolder."""

    spec = SPEC

    def __init__(self, root, split="train", transform=None):
        split = check_split(SPEC, split)
        base = resolve_root(SPEC, root, split)
        super().__init__(base, split, transform)
        split_dir = require_dir(SPEC, base / split, f"{split} split")
        self.classes = self._classes(base, split_dir)
        self.class_to_idx = {wnid: i for i, wnid in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        for wnid in self.classes:
            names = list_files(split_dir / wnid, IMAGE_SUFFIXES)
            if not names:
                empty.append(split_dir / wnid)
            self.samples += [(str(split_dir / wnid / n), self.class_to_idx[wnid]) for n in names]
        if empty:
            raise EmptySplitError(
                SPEC.name,
                empty[0],
                f"class folder has no images ({len(empty)} empty class folder(s) in {split_dir})",
                SPEC.fix_hint(),
            )
        self.targets = [target for _, target in self.samples]

    def _classes(self, base: Path, split_dir: Path) -> list[str]:
        classes = _class_folders(split_dir)
        if not classes:
            loose = list_files(split_dir, IMAGE_SUFFIXES)
            hint = (
                f"{split_dir} holds {len(loose)} loose images: sort them into <wnid>/ folders (ImageNet's valprep.sh)"
                if loose
                else SPEC.fix_hint()
            )
            raise EmptySplitError(SPEC.name, split_dir, "split folder has no class folders", hint)
        train_dir = base / "train"
        if split_dir != train_dir and train_dir.is_dir():
            train_classes = _class_folders(train_dir)
            if train_classes != classes:
                missing = [
                    train_dir.parent / self.split / c for c in sorted(set(train_classes) - set(classes))
                ]
                raise_missing(SPEC, missing, "class folder", f"from {split_dir} that train/ has")
                extra = sorted(set(classes) - set(train_classes))
                raise MalformedFileError(
                    SPEC.name,
                    split_dir / extra[0],
                    f"class folder absent from train/ ({len(extra)} such)",
                    "train and val must hold the same wnid folders so class indices agree",
                )
        return classes

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        path, target = self.samples[index]
        return read_rgb(SPEC, Path(path)), target


register_dataset(DatasetEntry(SPEC, loader=ImageNetFolder, twin="benchmarks.data.synth.imagenet", order=0))
