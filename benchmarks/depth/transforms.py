"""Train augmentation and test preprocessing of the NYU protocol, on torch tensors.

Train (the depth toolbox's NYU pipeline): NYU crop (the valid area of the 480 x 640 frame), rotation by
U(-2.5, 2.5) degrees (with probability 0.5; bilinear image, nearest depth, zeros outside), horizontal flip
(0.5), random crop (416 x 544 in the paper), colour augmentation (0.5: gamma U(0.9, 1.1), brightness
U(0.75, 1.25), per-channel colour U(0.9, 1.1)), normalization with the backbone's mean/std (ImageNet's for
DINOv2). The toolbox applies the colour
augmentation to 0-255 pixel values and clips at 255 (``colour_aug: reference``; gamma on that scale brightens
far more than on [0, 1]); ``unit`` applies it on [0, 1] and clips at 1. Crop boxes given for
480 x 640 frames are scaled to the image's size, so the synthetic twin (smaller frames) gets the same framing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

NYU_CROP_480x640 = (45, 472, 43, 608)  # rows [45, 472), cols [43, 608): the toolbox's NYUCrop


def to_tensors(sample: dict) -> tuple[Tensor, Tensor]:
    """(3, H, W) float image in [0, 1] and (1, H, W) depth in metres from a ``NYUDepthV2`` sample."""
    image = torch.from_numpy(np.array(sample["image"], dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    depth = torch.from_numpy(np.array(sample["depth"], dtype=np.float32)).float()[None]
    return image, depth


def normalize(image: Tensor, mean, std) -> Tensor:
    """``(image - mean) / std`` per channel, with the backbone's statistics (benchmarks.core.preprocessing)."""
    mean = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image - mean) / std


def scaled_box(box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    top, bottom, left, right = box
    sy, sx = height / 480.0, width / 640.0
    return round(top * sy), round(bottom * sy), round(left * sx), round(right * sx)


def rotate(image: Tensor, depth: Tensor, degrees: float) -> tuple[Tensor, Tensor]:
    """Rotate about the centre: bilinear for the image, nearest for depth (no mixed depths); zeros outside."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    height, width = image.shape[-2:]
    # affine_grid works in normalized coordinates; correct the aspect ratio so the rotation is rigid in pixels.
    theta = torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    depth = F.grid_sample(depth[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return image, depth


COLOUR_AUGS = {"reference": 255.0, "unit": 1.0}  # the pixel scale the colour augmentation works on


def colour_augment(image: Tensor, gamma: float, brightness: float, colours, scale: float = 255.0) -> Tensor:
    """``clip((x * scale) ** gamma * brightness * colour_c, 0, scale) / scale`` for a (3, H, W) image in [0, 1]."""
    x = (image.clamp(0, 1) * scale) ** gamma * brightness
    x = x * torch.as_tensor(colours, dtype=image.dtype).view(3, 1, 1)
    return x.clamp(0, scale) / scale


@dataclass
class TrainTransform:
    crop: tuple[int, int] = (416, 544)
    rotate_degrees: float = 2.5
    gamma: tuple[float, float] = (0.9, 1.1)
    brightness: tuple[float, float] = (0.75, 1.25)
    colour: tuple[float, float] = (0.9, 1.1)
    colour_aug: str = "reference"
    mean: tuple[float, ...] = field(kw_only=True)  # the backbone's normalisation
    std: tuple[float, ...] = field(kw_only=True)

    def __post_init__(self):
        if self.colour_aug not in COLOUR_AUGS:
            raise ValueError(f"colour_aug must be one of {', '.join(COLOUR_AUGS)}, got {self.colour_aug!r}")

    def __call__(self, sample: dict, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        image, depth = to_tensors(sample)
        top, bottom, left, right = scaled_box(NYU_CROP_480x640, *image.shape[-2:])
        image, depth = image[:, top:bottom, left:right], depth[:, top:bottom, left:right]
        if rng.random() < 0.5:
            image, depth = rotate(image, depth, rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        if rng.random() < 0.5:
            image, depth = image.flip(-1), depth.flip(-1)
        image, depth = self._random_crop(image, depth, rng)
        if rng.random() < 0.5:
            gamma, brightness = rng.uniform(*self.gamma), rng.uniform(*self.brightness)
            image = colour_augment(image, gamma, brightness, rng.uniform(*self.colour, size=3),
                                   COLOUR_AUGS[self.colour_aug])  # fmt: skip
        return normalize(image, self.mean, self.std), depth

    def _random_crop(self, image: Tensor, depth: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        height, width = image.shape[-2:]
        ch, cw = self.crop
        if ch > height or cw > width:  # smaller frame than the crop: pad with zeros (= invalid depth)
            pad = (0, max(0, cw - width), 0, max(0, ch - height))
            image, depth = F.pad(image, pad), F.pad(depth, pad)
            height, width = image.shape[-2:]
        y = int(rng.integers(0, height - ch + 1))
        x = int(rng.integers(0, width - cw + 1))
        return image[:, y : y + ch, x : x + cw], depth[:, y : y + ch, x : x + cw]

    def describe(self) -> str:
        return (f"nyu_crop+rotate({self.rotate_degrees})+flip+crop{self.crop}+color(g{self.gamma},"
                f"b{self.brightness},c{self.colour},{self.colour_aug})"
                f"+norm(mean={tuple(self.mean)},std={tuple(self.std)})")  # fmt: skip


class AugmentedNYU(torch.utils.data.Dataset):
    """A ``NYUDepthV2`` split with :class:`TrainTransform`, indexed by ``(index, seed)``: the seed, drawn by the
    sampler with the index, fixes the augmentation, so a draw is the same in any process or loader worker."""

    def __init__(self, dataset, transform: TrainTransform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = item
        return self.transform(self.dataset[index], np.random.default_rng(seed))


class TestNYU(torch.utils.data.Dataset):
    """Full-resolution normalized image (the backbone's ``mean``/``std``) and depth of a ``NYUDepthV2`` split."""

    def __init__(self, dataset, mean, std):
        self.dataset, self.mean, self.std = dataset, tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, depth = to_tensors(self.dataset[index])
        return normalize(image, self.mean, self.std), depth
