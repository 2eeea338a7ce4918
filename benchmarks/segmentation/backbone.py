"""The frozen ViT as an mmseg backbone: patch-token maps of selected blocks, with the final norm.

The ViT is held outside the module tree (not a submodule): it has no parameters in the segmentor, so the
optimizer, DDP and checkpoints see only the head, and a ViT-g never lands in a 40k-iteration checkpoint. It
runs under ``torch.inference_mode`` in eval mode; its outputs are cloned into normal tensors so the trainable
head can save them for backward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

from benchmarks.segmentation.padding import center_pad


def last_blocks(n_blocks: int, n: int) -> list[int]:
    """Indices of the last ``n`` of ``n_blocks`` blocks."""
    if not 1 <= n <= n_blocks:
        raise ValueError(f"cannot take the last {n} blocks of a backbone with {n_blocks} blocks")
    return list(range(n_blocks - n, n_blocks))


@MODELS.register_module()
class FrozenViTBackbone(BaseModule):
    """Multi-level feature maps ``(B, D, H/14, W/14)`` of a frozen DINOv2-style ViT.

    Args:
        spec: ``NAME[:WEIGHTS]`` to load with ``sinder.weights.load_backbone`` (config-file use), or None when
            the caller attaches a live model with :meth:`attach` (what the benchmark tasks do).
        layers: the number of last blocks (int) or explicit block indices; maps come out in block order.
        norm: apply the final LayerNorm to each selected block's tokens (the segmentation protocol does).
        pad_multiple: inputs are center-padded to a multiple of this (None: the model's patch size).
    """

    def __init__(self, spec: str | None = None, layers: int | Sequence[int] = 4, norm: bool = True,
                 pad_multiple: int | None = None, init_cfg=None):  # fmt: skip
        super().__init__(init_cfg)
        self.layers = layers if isinstance(layers, int) else [int(i) for i in layers]
        self.norm = norm
        self.pad_multiple = pad_multiple
        self.__dict__["_vit"] = None  # bypasses nn.Module registration on purpose (see module docstring)
        if spec is not None:
            from benchmarks.core.backbones import load, parse_backbone_spec

            self.attach(load(parse_backbone_spec(spec)))

    @property
    def vit(self) -> nn.Module:
        if self._vit is None:
            raise RuntimeError(
                "FrozenViTBackbone has no ViT: give `spec` in the config or call attach(model) before use"
            )
        return self._vit

    def attach(self, model: nn.Module) -> FrozenViTBackbone:
        """Use ``model`` (frozen here: eval mode, no gradients) as the feature extractor."""
        if not callable(getattr(model, "get_intermediate_layers", None)):
            raise TypeError(f"{type(model).__name__} has no get_intermediate_layers: not a DINOv2-style ViT")
        model.eval()
        model.requires_grad_(False)
        self.__dict__["_vit"] = model
        return self

    @property
    def block_indices(self) -> list[int]:
        n_blocks = len(self.vit.blocks)
        if isinstance(self.layers, int):
            return last_blocks(n_blocks, self.layers)
        bad = [i for i in self.layers if not 0 <= i < n_blocks]
        if bad:
            raise ValueError(f"block indices {bad} out of range for a backbone with {n_blocks} blocks")
        return list(self.layers)

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    def train(self, mode: bool = True):
        # The head trains; the ViT stays in eval mode whatever the segmentor is switched to.
        super().train(mode)
        if self._vit is not None:
            self._vit.eval()
        return self

    def init_weights(self):
        pass  # pretrained and frozen: mmengine's weight init must not touch it

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vit = self.vit
        param = next(vit.parameters())
        if param.device != x.device:
            vit.to(x.device)
        multiple = self.pad_multiple or int(vit.patch_size)
        with torch.inference_mode():
            padded, _ = center_pad(x.to(param.dtype), multiple)
            maps = vit.get_intermediate_layers(padded, n=self.block_indices, reshape=True, norm=self.norm)
        # Inference tensors cannot be saved for backward: clone them into ordinary tensors for the head.
        return tuple(m.float().clone() for m in maps)
