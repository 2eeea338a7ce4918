"""Unsupervised segmentation metrics: one confusion matrix over the whole set, one Hungarian matching on it.

This is the evaluation STEGO and CAUSE share. Pixels whose label lies outside ``[0, n_classes)`` are ignored.
Clusters are matched to classes once, on the confusion matrix of the whole evaluation set (not per image),
by ``scipy.optimize.linear_sum_assignment`` maximizing the matched pixels. The linear probe is scored with the
identity mapping (``hungarian=False``). Scores are percentages.

``mAP`` is CAUSE's name for a per-class average, not detection AP. CAUSE's (and STEGO's) code computes it as
``tp / (tp + fn)`` on a confusion matrix stored as [prediction, label], where its "fn" is the row sum minus tp:
the pixels *predicted* as the class that belong to another one. So the number in CAUSE's tables (and in the
paper's Table 2) is the mean per-class **precision** of the matched clusters (classes whose cluster is never
predicted are skipped, as NaN). ``map_definition="cause"`` (default) reproduces that; ``"recall"`` gives the mean
per-class recall (tp over the pixels of the class). Both are always returned as ``mean_precision`` and
``mean_recall``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

MAP_DEFINITIONS = ("cause", "recall")


def confusion_matrix(preds, labels, n_classes: int, n_clusters: int | None = None) -> torch.Tensor:
    """int64 matrix ``[cluster, class]`` counting pixels; labels outside ``[0, n_classes)`` are ignored.

    ``preds`` and ``labels`` are tensors or arrays of the same shape; predictions must lie in
    ``[0, n_clusters)`` (default ``n_clusters = n_classes``).
    """
    n_clusters = n_classes if n_clusters is None else int(n_clusters)
    preds = torch.as_tensor(preds).reshape(-1).long().cpu()
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if preds.shape != labels.shape:
        raise ValueError(f"preds have {preds.numel()} pixels but labels {labels.numel()}: pass maps of one shape")
    keep = (labels >= 0) & (labels < n_classes)
    preds, labels = preds[keep], labels[keep]
    if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= n_clusters):
        raise ValueError(
            f"predictions must lie in [0, {n_clusters}) (n_clusters), got values in "
            f"[{int(preds.min())}, {int(preds.max())}]: pass n_clusters= the number of clusters the probe has"
        )
    counts = torch.bincount(preds * n_classes + labels, minlength=n_clusters * n_classes)
    return counts.reshape(n_clusters, n_classes)


def hungarian_mapping(confusion: torch.Tensor) -> np.ndarray:
    """cluster -> class (``-1`` for clusters left unmatched) maximizing the matched pixels of ``confusion``."""
    matrix = torch.as_tensor(confusion).double().cpu().numpy()
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    mapping = np.full(matrix.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def scores_from_confusion(
    confusion: torch.Tensor, mapping: np.ndarray | None = None, map_definition: str = "cause"
) -> dict[str, float]:
    """mIoU, Acc, mAP (see module doc), mean_precision, mean_recall (x100) of a ``[cluster, class]`` matrix.

    ``mapping[cluster]`` is the class a cluster stands for (``-1``: none); default the identity. Pixels of
    unmatched clusters are errors: they count against their true class but as no class's prediction.
    """
    if map_definition not in MAP_DEFINITIONS:
        raise ValueError(f"map_definition must be one of {MAP_DEFINITIONS}, got {map_definition!r}")
    conf = torch.as_tensor(confusion).double().cpu()
    n_clusters, n_classes = conf.shape
    if mapping is None:
        mapping = np.arange(n_clusters)
        mapping[mapping >= n_classes] = -1
    mapping = np.asarray(mapping)
    # class-level prediction matrix: row c = the pixels of the cluster(s) mapped to class c
    predicted = torch.zeros(n_classes, n_classes, dtype=torch.float64)
    for cluster, cls in enumerate(mapping.tolist()):
        if cls >= 0:
            predicted[cls] += conf[cluster]
    tp = predicted.diagonal()
    n_predicted = predicted.sum(1)  # pixels predicted as the class
    n_actual = conf.sum(0)  # pixels of the class, whatever cluster took them
    total = conf.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = (tp / (n_predicted + n_actual - tp)).numpy()
        precision = (tp / n_predicted).numpy()
        recall = (tp / n_actual).numpy()
    acc = float(tp.sum() / total) if total > 0 else float("nan")

    def mean(values: np.ndarray) -> float:
        values = values[~np.isnan(values)]
        return float(values.mean() * 100) if values.size else float("nan")

    out = {
        "mIoU": mean(iou),
        "Acc": acc * 100,
        "mean_precision": mean(precision),
        "mean_recall": mean(recall),
    }
    out["mAP"] = out["mean_precision"] if map_definition == "cause" else out["mean_recall"]
    return out


def unsupervised_metrics(
    preds,
    labels,
    n_classes: int,
    hungarian: bool = True,
    n_clusters: int | None = None,
    map_definition: str = "cause",
) -> dict[str, float]:
    """Scores of ``preds`` against ``labels`` over the whole set (one confusion matrix, one matching).

    ``hungarian=True``: clusters are matched to classes (unsupervised, cluster probe); ``False``: predictions
    are class indices already (linear probe). Returns ``mIoU``, ``Acc``, ``mAP`` and friends, x100.
    """
    conf = confusion_matrix(preds, labels, n_classes, n_clusters)
    mapping = hungarian_mapping(conf) if hungarian else None
    return scores_from_confusion(conf, mapping, map_definition)


class ConfusionAccumulator:
    """Sums confusion matrices batch by batch (and across ranks) and scores them once at the end."""

    def __init__(self, n_classes: int, n_clusters: int | None = None):
        self.n_classes = n_classes
        self.n_clusters = n_classes if n_clusters is None else n_clusters
        self.matrix = torch.zeros(self.n_clusters, n_classes, dtype=torch.long)

    def update(self, preds, labels) -> None:
        self.matrix += confusion_matrix(preds, labels, self.n_classes, self.n_clusters)

    def all_reduce(self) -> ConfusionAccumulator:
        from benchmarks.core import distributed as D

        self.matrix = D.all_reduce_sum(self.matrix.clone())
        return self

    def compute(self, hungarian: bool = True, map_definition: str = "cause") -> dict[str, float]:
        mapping = hungarian_mapping(self.matrix) if hungarian else None
        return scores_from_confusion(self.matrix, mapping, map_definition)
