"""Weighted k-nearest-neighbour classification on frozen features, as DINOv2's KNN evaluation defines it.

For each test feature: cosine similarity to every train feature (features are L2-normalised, so a dot
product), the top ``max(ks)`` neighbours, weights ``softmax(sim / T)`` over those ``max(ks)`` neighbours (the
reference fixture confirms softmax: its k = 200 scores sum to 1 per row), and for each k the class score is the
sum of the weights of the first k neighbours carrying that class (no renormalisation per k).

The neighbour search is a chunked matmul + top-k in torch (faiss' flat index was slower on every size measured:
results/perf/knn.json, and it cannot run on the GPU tensors the features are on). Under
torchrun each rank searches its own slice of the train set and the per-shard top-k lists are merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from benchmarks.core import distributed as D

BACKENDS = ("auto", "torch")  # auto: torch, the only backend


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown KNN backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return "torch"


def _topk_torch(train: Tensor, test: Tensor, k: int, chunk_size: int, train_chunk: int) -> tuple[Tensor, Tensor]:
    """Top-k similarities and train indices per test row, bounded memory (test chunk x train chunk)."""
    n_test = test.shape[0]
    sims_out = torch.empty(n_test, k, dtype=test.dtype, device=test.device)
    idx_out = torch.empty(n_test, k, dtype=torch.long, device=test.device)
    for t0 in range(0, n_test, chunk_size):
        query = test[t0 : t0 + chunk_size]
        best_s = best_i = None
        for r0 in range(0, train.shape[0], train_chunk):
            sims = query @ train[r0 : r0 + train_chunk].T
            s, i = sims.topk(min(k, sims.shape[1]), dim=1, largest=True, sorted=True)
            i = i + r0
            if best_s is None:
                best_s, best_i = s, i
            else:  # merge the running top-k with this chunk's
                s = torch.cat([best_s, s], dim=1)
                i = torch.cat([best_i, i], dim=1)
                best_s, pos = s.topk(min(k, s.shape[1]), dim=1, largest=True, sorted=True)
                best_i = i.gather(1, pos)
        sims_out[t0 : t0 + chunk_size] = best_s
        idx_out[t0 : t0 + chunk_size] = best_i
    return sims_out, idx_out


def knn_neighbors(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int,
    *,
    backend: str = "torch",
    chunk_size: int = 1024,
    train_chunk: int | None = None,
    sharded: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` most similar train rows of each test row: ``(similarities, labels, train indices)``, each (n, k).

    Under torch.distributed with several ranks the search is split over the train set: with ``sharded=False``
    every rank holds the whole train set and searches its own slice; with ``sharded=True`` each rank passes only
    its own slice (contiguous, in rank order). Test features must be the same on every rank. Indices are global.
    """
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"KNN features must be 2-D with the same width: train {tuple(train_features.shape)}, "
            f"test {tuple(test_features.shape)}"
        )
    if train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(f"{train_labels.shape[0]} train labels for {train_features.shape[0]} train features")
    device = test_features.device
    offset, total = 0, train_features.shape[0]
    if D.world_size() > 1:
        if sharded:
            sizes = D.all_gather_cat(torch.tensor([train_features.shape[0]]))
            offset, total = int(sizes[: D.rank()].sum()), int(sizes.sum())
        else:
            start, stop = D.shard_range(train_features.shape[0])
            train_features, train_labels, offset = train_features[start:stop], train_labels[start:stop], start
    if k > total:
        raise ValueError(f"k={k} neighbours requested but the train set has only {total} features")

    local_k = min(k, train_features.shape[0])
    backend = _resolve_backend(backend, device)
    if local_k == 0:
        sims = test_features.new_empty(test_features.shape[0], 0)
        idx = torch.empty(test_features.shape[0], 0, dtype=torch.long, device=device)
    else:
        if train_chunk is None:  # keep each similarity block near 2^26 floats (256 MiB in fp32)
            train_chunk = max(local_k, (1 << 26) // max(1, min(chunk_size, test_features.shape[0])))
        sims, idx = _topk_torch(train_features.to(device), test_features, local_k, chunk_size, train_chunk)
    labels = train_labels.to(device)[idx]
    idx = idx + offset

    if D.world_size() > 1:  # merge the per-shard top-k lists into the global top-k
        sims, labels, idx = (D.all_gather_cat(t, dim=1) for t in (sims, labels, idx))
        sims, pos = sims.topk(k, dim=1, largest=True, sorted=True)
        labels, idx = labels.gather(1, pos), idx.gather(1, pos)
    return sims, labels, idx


def knn_scores_from_neighbors(
    sims: Tensor, labels: Tensor, ks: Iterable[int], T: float, num_classes: int
) -> dict[int, Tensor]:
    """Class scores per k from the sorted top-``max(ks)`` neighbour similarities and labels."""
    ks = sorted({int(k) for k in ks})
    weights = torch.softmax(sims / T, dim=1)  # over all max(ks) neighbours, as the reference does
    out = {}
    for k in ks:
        scores = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
        out[k] = scores.scatter_add_(1, labels[:, :k], weights[:, :k])
    return out


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    ks: Sequence[int],
    T: float,
    num_classes: int,
    *,
    backend: str = "torch",
    chunk_size: int = 1024,
    sharded: bool = False,
) -> dict[int, Tensor]:
    """``{k: class scores (n_test x num_classes)}`` of DINOv2's weighted KNN classifier.

    Features are expected L2-normalised (cosine similarity = dot product). See :func:`knn_neighbors` for the
    meaning of ``backend``, ``chunk_size`` and ``sharded``.
    """
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive neighbour counts, got {list(ks)}")
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if train_labels.numel() and (int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes):
        raise ValueError(
            f"train labels must lie in [0, {num_classes}); got range [{int(train_labels.min())}, "
            f"{int(train_labels.max())}]: check num_classes"
        )
    sims, labels, _ = knn_neighbors(
        train_features, train_labels, test_features, max(ks), backend=backend, chunk_size=chunk_size, sharded=sharded
    )
    return knn_scores_from_neighbors(sims, labels, ks, T, num_classes)


def topk_accuracy(scores: Tensor, labels: Tensor, topk: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent, computed as the reference does (float32 ratio, then x100 in Python)."""
    labels = labels.to(scores.device)
    out = {}
    for k in topk:
        k_eff = min(k, scores.shape[1])
        hit = (scores.topk(k_eff, dim=1).indices == labels[:, None]).any(dim=1)
        ratio = hit.sum().float() / torch.tensor(float(labels.numel()))
        out[k] = ratio.item() * 100.0
    return out


def evaluate_knn(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    ks: Sequence[int] = (10, 20, 100, 200),
    T: float = 0.07,
    num_classes: int | None = None,
    *,
    backend: str = "torch",
    chunk_size: int = 1024,
) -> dict:
    """Top-1/top-5 for every k, and the k with the best top-1 (ties: the smaller k), as the paper reports.

    Returns ``{"metrics": {"top1", "top5", "k10_top1", ...}, "hparams": {"k", "T", "ks", "backend"}}``.
    """
    if num_classes is None:
        num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    scores = knn_classify(
        train_features, train_labels, test_features, ks, T, num_classes, backend=backend, chunk_size=chunk_size
    )
    metrics: dict[str, float] = {}
    for k, s in scores.items():
        acc = topk_accuracy(s, test_labels, (1, 5))
        metrics[f"k{k}_top1"], metrics[f"k{k}_top5"] = acc[1], acc[5]
    best_k = max(sorted(scores), key=lambda k: (metrics[f"k{k}_top1"], -k))
    metrics["top1"], metrics["top5"] = metrics[f"k{best_k}_top1"], metrics[f"k{best_k}_top5"]
    resolved = _resolve_backend(backend, test_features.device)
    return {"metrics": metrics, "hparams": {"k": best_k, "T": T, "ks": sorted(scores), "backend": resolved}}
