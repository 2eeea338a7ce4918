"""In-memory cache of the frozen backbone's maps per training crop (smoke profile, un-augmented crops).

With a deterministic training pipeline (fixed resize and center crop, no flip or photometric distortion) an
image yields the same crop every time it is drawn, so the frozen ViT's maps of it can be computed once and
reused. An entry is keyed by the sha256 of the preprocessed crop itself (shape, dtype, bytes) together with
everything else the maps depend on (weights sha256, blocks, final norm, padding multiple): a cached map is only
ever returned for exactly the input it was computed from. Nothing here depends on augmentation being off; with
augmentation on every lookup misses and the cache only grows, which is why the config enables both together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sinder.utils.hashing import new_digest


@dataclass
class CacheStats:
    entries: int = 0
    hits: int = 0  # per sample: maps served from the cache
    misses: int = 0  # per sample: not in the cache when its batch arrived (computed, then stored)

    def as_dict(self) -> dict[str, int]:
        return {"entries": self.entries, "hits": self.hits, "misses": self.misses}


class CropFeatureCache:
    """Per-sample maps ``(tuple of (D, h, w) tensors)`` keyed by the crop's content and ``context``.

    ``context`` names what the maps depend on besides the crop (see :meth:`FrozenViTBackbone.cache_context`).
    """

    def __init__(self, context: str):
        self.context = context
        self._maps: dict[str, tuple[Tensor, ...]] = {}
        self.stats = CacheStats()

    def key(self, sample: Tensor) -> str:
        digest = new_digest(f"{self.context}|{tuple(sample.shape)}|{sample.dtype}|".encode())
        # A uint8 view hashes the exact bytes for any dtype (numpy has no bfloat16).
        digest.update(sample.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
        return digest.hexdigest()

    def __contains__(self, key: str) -> bool:
        return key in self._maps

    def __len__(self) -> int:
        return len(self._maps)

    def get(self, key: str) -> tuple[Tensor, ...]:
        return self._maps[key]

    def put(self, key: str, maps: tuple[Tensor, ...]) -> None:
        # Own copies: a slice of the batch output would keep the whole batch's storage alive.
        self._maps[key] = tuple(m.detach().clone() for m in maps)
        self.stats.entries = len(self._maps)
