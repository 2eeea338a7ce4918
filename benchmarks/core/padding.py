"""Center padding of images to a multiple of the patch size (DINOv2's ``CenterPadding``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .preprocessing import patch_multiple


def center_pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding that brings ``size`` to the next multiple of ``multiple``, split evenly."""
    total = patch_multiple(size, multiple) - size
    return total // 2, total - total // 2


def center_pad(x: Tensor, multiple: int, value: float = 0.0) -> tuple[Tensor, tuple[int, int, int, int]]:
    """``x`` (..., H, W) zero-padded on all sides to multiples of ``multiple``; also (top, bottom, left, right)."""
    top, bottom = center_pad_amounts(x.shape[-2], multiple)
    left, right = center_pad_amounts(x.shape[-1], multiple)
    if top == bottom == left == right == 0:
        return x, (0, 0, 0, 0)
    return F.pad(x, (left, right, top, bottom), value=value), (top, bottom, left, right)
