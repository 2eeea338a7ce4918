"""PIL-based image transforms of the ImageNet classification protocols (no torchvision dependency).

They follow torchvision's definitions (short-side resize with truncated long side, rounded centre crop,
RandomResizedCrop with 10 attempts then a centre fallback), and each describes itself for feature-cache keys.
Random draws use torch's global generator, which DataLoader seeds per worker.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torch import Tensor

BICUBIC = Image.Resampling.BICUBIC


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def describe(self) -> str:
        return " > ".join(t.describe() for t in self.transforms)


class Resize:
    """Resize so the shorter side is ``size`` (bicubic), keeping the aspect ratio."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w <= h:
            new_w, new_h = self.size, int(self.size * h / w)
        else:
            new_w, new_h = int(self.size * w / h), self.size
        return img if (new_w, new_h) == (w, h) else img.resize((new_w, new_h), BICUBIC)

    def describe(self) -> str:
        return f"resize_short({self.size},bicubic)"


class CenterCrop:
    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w < self.size or h < self.size:  # pad-free protocols resize first; upscale as a last resort
            img = Resize(self.size)(img)
            w, h = img.size
        top = int(round((h - self.size) / 2.0))
        left = int(round((w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))

    def describe(self) -> str:
        return f"center_crop({self.size})"


class RandomResizedCrop:
    """A random crop of ``scale`` of the area and ``ratio`` aspect, resized to ``size`` x ``size`` (bicubic)."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = int(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    def _box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,)))
                left = int(torch.randint(0, width - w + 1, (1,)))
                return left, top, w, h
        # Fallback: the largest centred crop whose aspect lies within ``ratio``.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image) -> Image.Image:
        left, top, w, h = self._box(*img.size)
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), BICUBIC)

    def describe(self) -> str:
        return f"random_resized_crop({self.size},scale={self.scale},ratio={self.ratio},bicubic)"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if float(torch.rand(1)) < self.p else img

    def describe(self) -> str:
        return f"hflip({self.p})"


class ToTensorNormalize:
    """PIL RGB image -> float tensor (3, H, W) in [0, 1], then per-channel ``(x - mean) / std`` (the backbone's:
    ``benchmarks.core.preprocessing``)."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> Tensor:
        data = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
        x = data.view(img.size[1], img.size[0], 3).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std

    def describe(self) -> str:
        return f"to_tensor_normalize(mean={tuple(self.mean.flatten().tolist())},std={tuple(self.std.flatten().tolist())})"


def eval_transform(resize: int, crop: int, *, mean, std) -> Compose:
    """The evaluation transform: resize the short side, centre crop, the backbone's normalisation."""
    return Compose([Resize(resize), CenterCrop(crop), ToTensorNormalize(mean, std)])


def train_transform(crop: int, *, mean, std) -> Compose:
    """The linear-probe training transform: RandomResizedCrop (bicubic) + horizontal flip + normalisation."""
    return Compose([RandomResizedCrop(crop), RandomHorizontalFlip(), ToTensorNormalize(mean, std)])
