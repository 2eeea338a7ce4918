"""Image folders and the repair/analysis input transform (PIL only, as torchvision applies to PIL images).

The official SINDER code resizes the short side to the resolution (bicubic, antialiased), centre-crops a
square, converts to [0, 1] and normalises with the ImageNet mean/std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Short side and square crop of the repair and analysis input: DINOv2's 37 x 37 patch grid at patch 14 (official)
DEFAULT_RESOLUTION = 518
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def list_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), in sorted order so that runs are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return files


def stride_subset(files: list[Path], count: int) -> list[Path]:
    """Every k-th file so that about ``count`` remain, spread over the folder (as the official repair does)."""
    if count >= len(files):
        return list(files)
    step = len(files) // count
    return files[::step][:count]


def resize_center_crop(img: Image.Image, size: int, round_long_side: bool = False) -> Image.Image:
    """Short side to ``size`` (bicubic; PIL antialiases when shrinking), then the centred ``size`` square. The long
    side is truncated (torchvision's Resize), or rounded with ``round_long_side`` (a second view of the census)."""
    width, height = img.size
    whole = round if round_long_side else int
    if width <= height:
        new_w, new_h = size, whole(size * height / width)
    else:
        new_w, new_h = whole(size * width / height), size
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_normalized_tensor(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """A 3 x H x W float tensor of ``img``, ``(x / 255 - mean) / std`` (a benchmark passes its backbone's)."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    return (tensor - mean) / std


def load_image(path: str | Path, resolution: int, patch_size: int = 14, resize: int | None = None,
               round_long_side: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:  # fmt: skip
    """A 3 x R x R normalised tensor of one image file, R = ``resolution`` (a multiple of the patch size); with
    ``resize``, the short side goes to ``resize`` first and the centred R square is cut from it (no rescale).
    ``round_long_side``: round, not truncate, the resized long side (the census looks at both). ``mean``/``std``:
    the backbone's (``sinder.models.backbone.normalization``), ImageNet's by default."""
    if resolution % patch_size:
        raise ValueError(f"resolution {resolution} is not a multiple of the patch size {patch_size}")
    if resize is not None and resize < resolution:
        raise ValueError(f"resize {resize} is smaller than the crop {resolution}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if resize is not None and resize != resolution:  # torchvision Resize(resize) + CenterCrop(resolution)
                width, height = img.size
                short = min(width, height)
                new_w, new_h = int(resize * width / short), int(resize * height / short)
                img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
                left, top = int(round((new_w - resolution) / 2.0)), int(round((new_h - resolution) / 2.0))
                return to_normalized_tensor(img.crop((left, top, left + resolution, top + resolution)), mean, std)
            return to_normalized_tensor(resize_center_crop(img, resolution, round_long_side), mean, std)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
