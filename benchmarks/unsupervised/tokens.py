"""Frozen backbone features for the unsupervised heads: last-block patch tokens, cached when they fit.

Both STEGO and CAUSE train small heads on the patch tokens of the backbone's last block after its final norm
(as maps, B x C x h x w). The backbone never changes and the training crops are fixed, so the tokens of a
training set can be extracted once and cached on disk (``benchmarks.core.features``, keyed by the weights sha256,
the view and the resolution). For ViT-g on a full dataset that cache would be tens of GB, so
``TokenSource`` decides by size: ``cache="auto"`` caches when the estimate is below ``max_cache_gb`` and
otherwise runs the backbone on every training batch.

``knn_indices`` gives STEGO's positive-pair neighbours: cosine top-k of mean-pooled, normalized token maps,
stored beside the feature cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.core import distributed as D
from benchmarks.core.features import FeatureSpec, compute_dtype_name, describe, extract_features
from sinder.utils.atomic import atomic_path
from sinder.utils.hashing import text_sha256

from .data import ImageOnly, SegmentationView, label_stack

CACHE_MODES = ("auto", True, False)


def patch_tokens(model, images: torch.Tensor) -> torch.Tensor:
    """Last block's patch tokens after the final norm, B x C x (H/p) x (W/p), float32."""
    (maps,) = model.get_intermediate_layers(images, n=1, reshape=True, norm=True)
    return maps.float()


def pooled_tokens(model, images: torch.Tensor) -> torch.Tensor:
    """L2-normalized spatial mean of the patch-token map (STEGO's KNN feature), B x C."""
    return F.normalize(patch_tokens(model, images).mean((2, 3)), dim=1)


def _autocast(device: torch.device, amp_dtype):
    if device.type == "cuda" and amp_dtype is not None:
        return torch.autocast("cuda", dtype=amp_dtype)
    return torch.autocast(device.type, enabled=False)


def _spec(ctx, view: SegmentationView, layers: str) -> FeatureSpec:
    return FeatureSpec(
        weights_sha256=ctx.weights_sha256,
        dataset=view.fingerprint(),
        transform=describe(view),
        resolution=str(view.resolution),
        layers=layers,
        dtype=compute_dtype_name(ctx.device, ctx.amp_dtype),
    )


class TokenSource:
    """Patch-token maps of the items of ``view``, from an on-disk cache or from the backbone per batch."""

    def __init__(self, model, view: SegmentationView, ctx, cache="auto", max_cache_gb: float = 4.0,
                 batch_size: int = 32, desc: str = "tokens"):  # fmt: skip
        if cache not in CACHE_MODES:
            raise ValueError(f"feature cache must be one of {CACHE_MODES}, got {cache!r}")
        self.model, self.view, self.ctx = model, view, ctx
        self.device = torch.device(ctx.device)
        probe = patch_tokens_shape(model, view.resolution)
        self.channels, self.grid = probe[0], probe[1:]
        self.estimated_gb = len(view) * self.channels * self.grid[0] * self.grid[1] * 4 / 1e9
        self.cached = bool(cache) if cache != "auto" else self.estimated_gb <= max_cache_gb
        self.features = self.labels = None
        if self.cached:
            out = extract_features(
                model, ImageOnly(view), patch_tokens, spec=_spec(ctx, view, "patch@last,norm,map"),
                cache_dir=ctx.feature_cache, batch_size=batch_size, num_workers=ctx.num_workers,
                device=self.device, amp_dtype=ctx.amp_dtype, progress=ctx.progress, desc=desc,
            )  # fmt: skip
            self.features = out["features"]
            self.labels = label_stack(view)

    @property
    def mode(self) -> str:
        return "cached" if self.cached else "online"

    def labels_of(self, indices: torch.Tensor) -> torch.Tensor:
        if self.labels is not None:
            return self.labels[indices].long().to(self.device)
        return torch.stack([self.view[int(i)]["label"] for i in indices]).to(self.device)

    def tokens_of(self, indices: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        """B x C x h x w tokens of ``indices`` (``images``: their normalized images, needed when online)."""
        if self.features is not None:
            return self.features[indices].to(self.device, non_blocking=True)
        if images is None:
            images = torch.stack([self.view[int(i)]["image"] for i in indices])
        return compute_tokens(self.model, images.to(self.device, non_blocking=True), self.ctx.amp_dtype)


@torch.no_grad()
def compute_tokens(model, images: torch.Tensor, amp_dtype=None) -> torch.Tensor:
    with torch.inference_mode(), _autocast(images.device, amp_dtype):
        out = patch_tokens(model, images)
    return out.float().clone()  # out of inference mode, so heads can train on it


def patch_tokens_shape(model, resolution: int) -> tuple[int, int, int]:
    patch = int(model.patch_size)
    if resolution % patch:
        raise ValueError(
            f"resolution {resolution} is not a multiple of the backbone's patch size {patch}: "
            f"use e.g. {resolution // patch * patch} or {(resolution // patch + 1) * patch}"
        )
    return int(model.embed_dim), resolution // patch, resolution // patch


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)


def knn_indices(model, view: SegmentationView, ctx, k: int = 30, batch_size: int = 64) -> torch.Tensor:
    """N x k indices of each item's nearest items (itself first) by cosine of pooled normalized tokens.

    The pooled features and the neighbour table are cached (rank 0 writes, every rank reads the same).
    """
    spec = _spec(ctx, view, "patch@last,norm,mean,l2")
    pooled = extract_features(
        model, ImageOnly(view), pooled_tokens, spec=spec, cache_dir=ctx.feature_cache, batch_size=batch_size,
        num_workers=ctx.num_workers, device=ctx.device, amp_dtype=ctx.amp_dtype, progress=ctx.progress,
        desc="knn features",
    )["features"]  # fmt: skip
    k = min(k, len(pooled))
    path = None
    if ctx.feature_cache is not None:
        key = text_sha256(f"{spec.key()}:top{k}")
        path = Path(ctx.feature_cache) / "knn" / f"{key}.safetensors"
        if D.broadcast_object(path.is_file()):
            from safetensors.torch import load_file

            try:
                return load_file(str(path))["nns"]
            except Exception:  # unreadable: recompute
                pass
    feats = pooled.to(ctx.device)
    rows = []
    for start in range(0, len(feats), 4096):
        sims = feats[start : start + 4096] @ feats.t()
        rows.append(sims.topk(k, dim=1).indices.cpu())
    nns = torch.cat(rows)
    if path is not None:
        if D.is_main():
            _save_atomic({"nns": nns}, path)
        D.barrier()
    return nns
