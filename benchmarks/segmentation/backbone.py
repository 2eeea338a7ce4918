"""The frozen ViT as an mmseg backbone: patch-token maps of selected blocks, with the final norm.

The ViT is held outside the module tree (not a submodule): it has no parameters in the segmentor, so the
optimizer, DDP and checkpoints see only the head, and a ViT-g never lands in a 40k-iteration checkpoint. It
runs under ``torch.inference_mode`` in eval mode; its outputs are cloned into normal tensors so the trainable
head can save them for backward.

With ``cache_train_features`` (smoke profile, un-augmented training crops) the maps of each training crop are
computed once and reused (:mod:`benchmarks.segmentation.feature_cache`); in eval mode (the test and TTA loops)
the backbone always runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

from benchmarks.core.padding import center_pad
from benchmarks.segmentation.feature_cache import CropFeatureCache


def last_blocks(n_blocks: int, n: int) -> list[int]:
    """Indices of the last ``n`` of ``n_blocks`` blocks."""
    if not 1 <= n <= n_blocks:
        raise ValueError(f"cannot take the last {n} blocks of a backbone with {n_blocks} blocks")
    return list(range(n_blocks - n, n_blocks))


@MODELS.register_module()
class FrozenViTBackbone(BaseModule):
    """Multi-level feature maps ``(B, D, H/14, W/14)`` of a frozen DINOv2-style ViT.

    Args:
        spec: ``NAME[:WEIGHTS]`` to load with ``sinder.models.weights.load_backbone`` (config-file use), or None when
            the caller attaches a live model with :meth:`attach` (what the benchmark tasks do).
        layers: the number of last blocks (int) or explicit block indices; maps come out in block order.
        norm: apply the final LayerNorm to each selected block's tokens (the segmentation protocol does).
        pad_multiple: inputs are center-padded to a multiple of this (None: the model's patch size).
        cache_train_features: in training mode, serve the maps of a crop seen before from an in-memory cache
            keyed by its content (meant for deterministic training pipelines; see the module docstring).
    """

    def __init__(self, spec: str | None = None, layers: int | Sequence[int] = 4, norm: bool = True,
                 pad_multiple: int | None = None, cache_train_features: bool = False, init_cfg=None):  # fmt: skip
        super().__init__(init_cfg)
        self.layers = layers if isinstance(layers, int) else [int(i) for i in layers]
        self.norm = norm
        self.pad_multiple = pad_multiple
        self.cache_train_features = bool(cache_train_features)
        self.__dict__["_vit"] = None  # bypasses nn.Module registration on purpose (see module docstring)
        self._cache: CropFeatureCache | None = None
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
        self._cache = None  # maps of another model must never be served
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

    @property
    def pad_to(self) -> int:
        return int(self.pad_multiple or self.vit.patch_size)

    def cache_context(self) -> str:
        """What the maps depend on besides the input crop: part of every cache key."""
        sha = getattr(self.vit, "weights_sha256", None) or f"unhashed-model-{id(self.vit)}"
        return f"weights={sha};blocks={self.block_indices};norm={self.norm};pad={self.pad_to}"

    @property
    def feature_cache(self) -> CropFeatureCache | None:
        """The cache of training-crop maps (None until the first cached forward)."""
        return self._cache

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vit = self.vit
        param = next(vit.parameters())
        if param.device != x.device:
            vit.to(x.device)
        x = x.to(param.dtype)
        if self.training and self.cache_train_features:
            return self._cached_forward(x)
        return self._compute(x)

    def _compute(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            padded, _ = center_pad(x, self.pad_to)
            maps = self.vit.get_intermediate_layers(
                padded, n=self.block_indices, reshape=True, norm=self.norm
            )
        # Inference tensors cannot be saved for backward: clone them into ordinary tensors for the head.
        return tuple(m.float().clone() for m in maps)

    def _cached_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        context = self.cache_context()
        if self._cache is None or self._cache.context != context:
            self._cache = CropFeatureCache(context)
        cache = self._cache
        keys = [cache.key(sample) for sample in x]
        todo: dict[str, int] = {}  # key -> first batch row with it (an image drawn twice is computed once)
        for row, key in enumerate(keys):
            if key in cache:
                cache.stats.hits += 1
            else:
                cache.stats.misses += 1
                todo.setdefault(key, row)
        if todo:
            maps = self._compute(x[list(todo.values())])
            for j, key in enumerate(todo):
                cache.put(key, tuple(m[j] for m in maps))
        entries = [cache.get(key) for key in keys]
        # torch.stack makes new tensors: the head never holds (or could modify) the cached ones.
        return tuple(torch.stack([entry[level] for entry in entries]) for level in range(len(entries[0])))
