"""Depth metrics of the NYU protocol, per image and averaged over images.

Per image, over pixels with valid ground truth (``min_depth < gt < max_depth`` as the depth toolbox's
``eval_mask``; ``include_max`` counts ``gt == max_depth`` too) inside the Eigen crop, with
the prediction clamped to ``[min_depth, max_depth]``: delta1..3 (share with max(gt/pred, pred/gt) < 1.25^k),
abs_rel, sq_rel, rmse, rmse_log, log10 and silog. Images without a valid pixel are left out of the mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

METRICS = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
LOWER_IS_BETTER = {"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"}
EIGEN_CROP_480x640 = (45, 471, 41, 601)  # rows [45, 471), cols [41, 601) of a 480 x 640 NYU frame


def eigen_crop_mask(height: int, width: int, device=None) -> Tensor:
    """The Eigen crop as a boolean (H, W) mask; its box is scaled from 480 x 640 for other image sizes."""
    top, bottom, left, right = EIGEN_CROP_480x640
    sy, sx = height / 480.0, width / 640.0
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[round(top * sy) : round(bottom * sy), round(left * sx) : round(right * sx)] = True
    return mask


def image_metrics(pred: Tensor, gt: Tensor, min_depth: float = 1e-3, max_depth: float = 10.0,
                  eigen_crop: bool = True, include_max: bool = False) -> dict[str, float] | None:  # fmt: skip
    """Metrics of one (H, W) prediction against its (H, W) ground truth, or None without valid pixels."""
    pred, gt = pred.double(), gt.double()
    mask = (gt > min_depth) & ((gt <= max_depth) if include_max else (gt < max_depth))
    if eigen_crop:
        mask &= eigen_crop_mask(*gt.shape, device=gt.device)
    if not bool(mask.any()):
        return None
    p = pred[mask].clamp(min_depth, max_depth)
    g = gt[mask]
    ratio = torch.maximum(g / p, p / g)
    err = torch.log(p) - torch.log(g)
    diff = g - p
    out = {f"delta{k}": (ratio < 1.25**k).double().mean() for k in (1, 2, 3)}
    out["abs_rel"] = (diff.abs() / g).mean()
    out["sq_rel"] = (diff**2 / g).mean()
    out["rmse"] = torch.sqrt((diff**2).mean())
    out["rmse_log"] = torch.sqrt((err**2).mean())
    out["log10"] = (torch.log10(p) - torch.log10(g)).abs().mean()
    out["silog"] = torch.sqrt(((err**2).mean() - err.mean() ** 2).clamp_min(0)) * 100
    return {key: float(value) for key, value in out.items()}


class MetricAverager:
    """Sums per-image metrics; ``result()`` is their mean over the images that had valid pixels."""

    def __init__(self):
        self.sums = dict.fromkeys(METRICS, 0.0)
        self.count = 0
        self.skipped = 0

    def add(self, metrics: dict[str, float] | None) -> None:
        if metrics is None:
            self.skipped += 1
            return
        for key in METRICS:
            self.sums[key] += metrics[key]
        self.count += 1

    def state(self) -> list[float]:
        return [self.sums[k] for k in METRICS] + [float(self.count), float(self.skipped)]

    def merge_state(self, state: list[float]) -> None:
        for key, value in zip(METRICS, state):
            self.sums[key] += value
        self.count += int(state[len(METRICS)])
        self.skipped += int(state[len(METRICS) + 1])

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no test image had a valid depth pixel: cannot compute depth metrics")
        return {key: self.sums[key] / self.count for key in METRICS}


def mean_depth_baseline(train_depths, test_depths, min_depth=1e-3, max_depth=10.0,
                        include_max: bool = False) -> dict[str, float]:  # fmt: skip
    """Metrics of predicting one constant everywhere: the mean valid depth of the training maps (arrays or
    tensors, metres); also returns that mean as ``mean_depth``."""
    total, count = 0.0, 0
    for depth in train_depths:
        depth = torch.as_tensor(depth)
        valid = depth[(depth > min_depth) & (depth <= max_depth)]
        total += float(valid.double().sum())
        count += int(valid.numel())
    if count == 0:
        raise ValueError("the training maps have no valid depth pixel")
    mean = total / count
    averager = MetricAverager()
    for depth in test_depths:
        depth = torch.as_tensor(depth)
        averager.add(image_metrics(torch.full_like(depth, mean), depth, min_depth, max_depth, include_max=include_max))
    result = averager.result()
    result["mean_depth"] = mean
    return result
