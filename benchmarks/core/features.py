"""Batched feature extraction from a frozen backbone, sharded across ranks and cached on disk.

The cache key holds everything the features depend on (weights sha256, dataset identity, transform, resolution,
layers, compute dtype), so a different checkpoint or preprocessing never reuses stale features. Under torchrun
each rank extracts a contiguous slice of the dataset and the slices are gathered back in dataset order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from sinder.utils.atomic import atomic_path
from sinder.utils.hashing import text_sha256

from . import distributed as D

FeatureFn = Callable[[torch.nn.Module, Tensor], "Tensor | Mapping[str, Tensor]"]


@dataclass(frozen=True)
class FeatureSpec:
    """Everything a cached feature tensor depends on; its hash names the cache file."""

    weights_sha256: str
    dataset: str  # dataset identity: name, split and a fingerprint of its files
    transform: str  # a description of the preprocessing (see transforms' ``describe``)
    resolution: str  # e.g. "224" or "224x224"
    layers: str  # which tokens of which blocks, e.g. "cls@norm,l2"
    dtype: str  # compute dtype: "float32" or the autocast dtype

    def key(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return text_sha256(canonical)


def dataset_fingerprint(dataset: Dataset) -> str:
    """A string that changes when the dataset's content changes (its own ``fingerprint()`` when it has one)."""
    fingerprint = getattr(dataset, "fingerprint", None)
    if callable(fingerprint):
        return str(fingerprint())
    return f"{type(dataset).__name__}:{len(dataset)}"


def cache_path(cache_dir: str | Path, spec: FeatureSpec) -> Path:
    key = spec.key()
    return Path(cache_dir) / key[:2] / f"{key}.safetensors"


def _load_cached(path: Path, spec: FeatureSpec) -> dict[str, Tensor] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if json.loads(meta.get("spec", "{}")) != asdict(spec):
                return None  # hash collision or a file from another schema: recompute
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception:  # unreadable (truncated, foreign format; safetensors has its own error type): recompute
        return None


def _save_cached(path: Path, spec: FeatureSpec, tensors: Mapping[str, Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"spec": json.dumps(asdict(spec))})


def _as_dict(out: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(out, Tensor):
        return {"features": out}
    if "labels" in out:
        raise ValueError("a feature function must not return a 'labels' entry: labels come from the dataset")
    return dict(out)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    # Mixed precision only on CUDA: CPU autocast changes numerics without a speed-up worth the parity loss.
    if device.type == "cuda" and amp_dtype is not None:
        return torch.autocast("cuda", dtype=amp_dtype)
    return torch.autocast(device.type, enabled=False)


def compute_dtype_name(device: torch.device | str, amp_dtype: torch.dtype | None) -> str:
    """The dtype features are computed in, as recorded in the cache key."""
    device = torch.device(device)
    return str(amp_dtype).removeprefix("torch.") if device.type == "cuda" and amp_dtype else "float32"


def _extract_local(
    model: torch.nn.Module,
    dataset: Dataset,
    feature_fn: FeatureFn,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    progress: bool,
    desc: str,
) -> dict[str, Tensor]:
    from sinder.utils.progress import progress as progress_bar

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    n = len(dataset)
    # Preallocated outputs: stacking a list of chunks would double the peak memory (7.9 GB for ImageNet x ViT-g).
    result: dict[str, Tensor] = {"labels": torch.empty(n, dtype=torch.long)}
    bar = progress_bar(loader, desc=desc, enabled=bool(progress))
    row = 0
    with torch.inference_mode(), _autocast(device, amp_dtype):
        for images, labels in bar:
            out = _as_dict(feature_fn(model, images.to(device, non_blocking=True)))
            size = images.shape[0]
            for name, value in out.items():
                if name not in result:
                    result[name] = torch.empty((n, *value.shape[1:]), dtype=torch.float32)
                result[name][row : row + size] = value.float().cpu()
            result["labels"][row : row + size] = torch.as_tensor(labels).long()
            row += size
    return result


def _empty_like_first(model, dataset, feature_fn, device, amp_dtype) -> dict[str, Tensor]:
    # A rank with no rows still needs correctly shaped (0, ...) tensors for the gather.
    image, label = dataset[0]
    with torch.inference_mode(), _autocast(device, amp_dtype):
        out = _as_dict(feature_fn(model, image.unsqueeze(0).to(device)))
    empty = {k: v.float().cpu()[:0] for k, v in out.items()}
    empty["labels"] = torch.zeros(0, dtype=torch.long)
    return empty


def extract_features(
    model: torch.nn.Module,
    dataset: Dataset,
    feature_fn: FeatureFn,
    *,
    spec: FeatureSpec | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = torch.bfloat16,
    progress: bool = True,
    desc: str = "features",
) -> dict[str, Tensor]:
    """Run ``feature_fn(model, images)`` over ``dataset`` (items ``(image, label)``) and stack the outputs.

    Returns ``{"features": (N, ...), "labels": (N,)}`` (or one entry per key of a dict-returning feature_fn),
    float32 on CPU, in dataset order, identical on every rank. With ``spec`` and ``cache_dir`` the result is read
    from / written to the cache (rank 0 writes). ``amp_dtype`` applies on CUDA only.
    """
    device = torch.device(device)
    if len(dataset) == 0:
        raise ValueError(f"cannot extract features from an empty dataset ({dataset_fingerprint(dataset)})")
    path = cache_path(cache_dir, spec) if (spec is not None and cache_dir is not None) else None
    if path is not None and D.broadcast_object(path.is_file()):
        cached = _load_cached(path, spec)
        if D.broadcast_object(cached is not None):
            return cached

    start, stop = D.shard_range(len(dataset))
    if stop > start:
        local = _extract_local(
            model, Subset(dataset, range(start, stop)), feature_fn, batch_size, num_workers, device, amp_dtype,
            progress, desc,
        )
    else:
        local = _empty_like_first(model, dataset, feature_fn, device, amp_dtype)
    result = {name: D.all_gather_cat(value) for name, value in local.items()}

    if path is not None:
        if D.is_main():
            _save_cached(path, spec, result)
        D.barrier()
    return result


def describe(obj: Any) -> str:
    """The description a transform gives of itself (``describe()``), else its repr, for cache keys."""
    fn = getattr(obj, "describe", None)
    return str(fn()) if callable(fn) else repr(obj)
