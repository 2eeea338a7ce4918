"""Frozen-backbone features for the depth heads: which blocks, and the forward that feeds the heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmarks.core.padding import center_pad

# DINOv2's Linear 4 / DPT blocks for its released depths (ViT-g 40, L 24, S/B 12 blocks).
OFFICIAL_BLOCKS = {40: [9, 19, 29, 39], 24: [4, 11, 17, 23], 12: [2, 5, 8, 11]}


def four_blocks(n_blocks: int) -> list[int]:
    """The 4 blocks of Linear 4 and DPT: DINOv2's choice for 12/24/40 blocks, otherwise the last block of each
    quarter of the depth, ``(k + 1) * n // 4 - 1`` (e.g. [1, 3, 5, 7] for 8 blocks, [0, 2, 3, 5] for 6)."""
    if n_blocks in OFFICIAL_BLOCKS:
        return list(OFFICIAL_BLOCKS[n_blocks])
    if n_blocks < 4:
        raise ValueError(f"Linear 4 and DPT need a backbone with at least 4 blocks, this one has {n_blocks}")
    return [(k + 1) * n_blocks // 4 - 1 for k in range(4)]


def head_blocks(head: str, n_blocks: int) -> list[int]:
    if head == "linear1":
        return [n_blocks - 1]
    if head in ("linear4", "dpt"):
        return four_blocks(n_blocks)
    raise ValueError(f"unknown depth head {head!r}; use linear1, linear4 or dpt")


def backbone_features(backbone: nn.Module, images: Tensor, blocks: list[int],
                      amp_dtype: torch.dtype | None = None) -> list[tuple[Tensor, Tensor]]:  # fmt: skip
    """``(patch map, pooled feature)`` of ``blocks`` without the final norm (the depth protocol; the pooled
    feature: the class token, or the attention pool's output: benchmarks.core.preprocessing), inputs
    center-padded to a multiple of the patch size; computed under inference mode (and CUDA autocast to
    ``amp_dtype`` when given), returned as normal float32 tensors."""
    from benchmarks.core.features import _autocast
    from benchmarks.core.preprocessing import pooled_layers

    with torch.inference_mode(), _autocast(images.device, amp_dtype):
        padded, _ = center_pad(images, int(backbone.patch_size))
        outs = pooled_layers(backbone, padded, n=blocks, reshape=True, norm=False)
    return [(patch.float().clone(), cls.float().clone()) for patch, cls in outs]
