"""The images STEGO and CAUSE feed their frozen backbone: fixed crops of a segmentation dataset, resized.

``SegmentationView`` turns a dataset of ``{"image": H x W x 3 uint8, "label": H x W int}`` samples into items
``{"index", "image" (3 x R x R, normalized with the backbone's mean/std), "label" (R x R long),
"rgb" (R x R x 3 uint8)}``:
- crops (training sets): STEGO five-crops Cityscapes at half height and width (torchvision ``five_crop``: four
  corners and the centre, top-left first); CAUSE's "super" crop of VOC is ``ten_crop`` (the five crops and those
  of the flipped image) at ratios 0.3 ... 0.7. Item ``i`` is crop ``i % n_crops`` of image ``i // n_crops``.
- resize: ``"short_center"`` resizes the short side to R and takes the centre R x R (STEGO, CAUSE Cityscapes);
  ``"square"`` resizes to R x R (CAUSE VOC). Images and labels are resized with the same interpolation, nearest
  in both references (PIL NEAREST), so labels are never blended.
Nothing is random, so features of a view can be cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from benchmarks.core.preprocessing import Preprocessing

RESIZE_MODES = ("short_center", "square")
CROP_KINDS = ("five", "ten")
_INTERPOLATION = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class CropSpec:
    kind: str  # "five" | "ten"
    ratio: float  # crop height/width as a fraction of the image's

    @property
    def count(self) -> int:
        return 5 if self.kind == "five" else 10


def parse_crops(entries: Sequence | None) -> tuple[CropSpec, ...]:
    """``[["five", 0.5]]`` / ``[{"kind": "ten", "ratio": 0.3}]`` / ``None`` -> crop specs (empty: whole image)."""
    specs = []
    for entry in entries or ():
        kind, ratio = (entry["kind"], entry["ratio"]) if isinstance(entry, dict) else entry
        if kind not in CROP_KINDS:
            raise ValueError(f"crop kind must be one of {CROP_KINDS}, got {kind!r}")
        if not 0.0 < float(ratio) <= 1.0:
            raise ValueError(f"crop ratio must be in (0, 1], got {ratio!r}")
        specs.append(CropSpec(kind, float(ratio)))
    return tuple(specs)


def crop_boxes(height: int, width: int, crops: Sequence[CropSpec]) -> list[tuple[int, int, int, int, bool]]:
    """(top, left, crop height, crop width, flipped) of every crop, in torchvision's five/ten-crop order."""
    if not crops:
        return [(0, 0, height, width, False)]
    boxes = []
    for spec in crops:
        ch, cw = max(int(height * spec.ratio), 1), max(int(width * spec.ratio), 1)
        centre = (int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0)))
        five = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw), centre]
        flips = (False, True) if spec.kind == "ten" else (False,)
        for flipped in flips:
            # ten_crop crops the mirrored image at the same places: mirror the box instead
            boxes += [(t, (width - cw - left) if flipped else left, ch, cw, flipped) for t, left in five]
    return boxes


def resize_pair(image: np.ndarray, label: np.ndarray, size: int, mode: str, interpolation: str = "nearest"):
    """(image, label) resized as ``mode`` says; labels always with nearest neighbour."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if interpolation not in _INTERPOLATION:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATION)}, got {interpolation!r}")
    height, width = image.shape[:2]
    if mode == "square":
        out_h = out_w = size
    elif height <= width:  # torchvision Resize(int): short side = size, long side truncated
        out_h, out_w = size, int(size * width / height)
    else:
        out_h, out_w = int(size * height / width), size
    img = Image.fromarray(image).resize((out_w, out_h), _INTERPOLATION[interpolation])
    lab = Image.fromarray(label.astype(np.int32)).resize((out_w, out_h), Image.NEAREST)
    image, label = np.array(img), np.asarray(lab).astype(np.int64)
    if mode == "short_center":
        top, left = int(round((out_h - size) / 2.0)), int(round((out_w - size) / 2.0))
        image, label = image[top : top + size, left : left + size], label[top : top + size, left : left + size]
    return image, label


def normalize(rgb: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 ... x H x W x 3 -> float ... x 3 x H x W with the backbone's mean/std."""
    return preprocessing.normalize(rgb.float().div(255.0).movedim(-1, -3))


class SegmentationView(Dataset):
    """Fixed crops of ``base`` resized to ``resolution`` (see module doc); ``len = len(base) * crops per image``."""

    def __init__(
        self,
        base: Dataset,
        resolution: int,
        crops: Sequence[CropSpec] = (),
        resize: str = "short_center",
        interpolation: str = "nearest",
        name: str = "",
        *,
        preprocessing: Preprocessing,  # the backbone's (benchmarks.core.preprocessing.preprocessing_of)
    ):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {resize!r}")
        self.base = base
        self.resolution = int(resolution)
        self.crops = tuple(crops)
        self.n_crops = sum(c.count for c in self.crops) or 1
        self.resize = resize
        self.interpolation = interpolation
        self.name = name or type(base).__name__
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.base) * self.n_crops

    def describe(self) -> str:
        crops = ",".join(f"{c.kind}{c.ratio:g}" for c in self.crops) or "none"
        norm = self.preprocessing.norm_tag()
        return f"crops={crops};resize={self.resize}@{self.resolution};interp={self.interpolation};{norm}"

    def fingerprint(self) -> str:
        inner = getattr(self.base, "fingerprint", None)
        base = inner() if callable(inner) else f"{type(self.base).__name__}:{len(self.base)}"
        root = getattr(self.base, "root", "")
        split = getattr(self.base, "split", "")
        return f"{self.name}:{split}:{root}:{base}:{self.describe()}"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb R x R x 3 uint8, label R x R int64) of item ``index``."""
        sample = self.base[index // self.n_crops]
        image = np.asarray(sample["image"], dtype=np.uint8)
        label = np.asarray(sample["label"], dtype=np.int64)
        top, left, ch, cw, flipped = crop_boxes(*image.shape[:2], self.crops)[index % self.n_crops]
        image, label = image[top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]
        if flipped:
            image, label = image[:, ::-1], label[:, ::-1]
        image, label = resize_pair(np.ascontiguousarray(image), np.ascontiguousarray(label), self.resolution,
                                   self.resize, self.interpolation)  # fmt: skip
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} items")
        rgb, label = self.load(index)
        rgb_t = torch.from_numpy(rgb)
        image = normalize(rgb_t, self.preprocessing)
        return {"index": index, "image": image, "label": torch.from_numpy(label), "rgb": rgb_t}


class ImageOnly(Dataset):
    """``(image, index)`` pairs of a view, the item shape ``benchmarks.core.features.extract_features`` wants."""

    def __init__(self, view: SegmentationView):
        self.view = view

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: int):
        item = self.view[index]
        return item["image"], index

    def fingerprint(self) -> str:
        return self.view.fingerprint()

    def describe(self) -> str:
        return self.view.describe()


def label_stack(view: SegmentationView) -> torch.Tensor:
    """All labels of a view as one uint8 tensor (N x R x R); values >= 255 (ignore) become 255."""
    out = torch.empty(len(view), view.resolution, view.resolution, dtype=torch.uint8)
    for i in range(len(view)):
        label = torch.from_numpy(view.load(i)[1])
        out[i] = torch.where((label < 0) | (label > 255), 255, label).to(torch.uint8)
    return out
