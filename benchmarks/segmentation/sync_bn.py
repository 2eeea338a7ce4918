"""BatchNorm with the statistics of the whole global batch on any device: SyncBN for multi-process CPU runs.

The protocol's head normalizes with SyncBN (statistics over the global batch of all GPUs); torch's SyncBatchNorm
refuses CPU tensors, so a CPU run under torchrun (gloo) would otherwise normalize each rank's share by itself
and train another head than one process does. This layer sums the per-channel count, sum and squared deviation
over the ranks (differentiable all-reduce, so gradients flow through the shared statistics as in SyncBN) and is
plain BatchNorm2d in a single process and in eval mode. Same parameters and buffers as ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_fn
from mmengine.registry import MODELS
from torch import Tensor, nn

from benchmarks.core import distributed as D


@MODELS.register_module("CollectiveSyncBN")
class CollectiveSyncBatchNorm(nn.BatchNorm2d):
    _abbr_ = "bn"  # mmcv names the layer by this (as it does SyncBN)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and D.world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        # Two passes in float64 (mean, then squared deviations from it), as a one-process BN computes them.
        count = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float64, device=x.device)
        totals = dist_fn.all_reduce(torch.cat([count, x.double().sum(dims)]))
        n, mean = totals[0], totals[1:] / totals[0]
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x.double() - mean.view(shape)
        var = dist_fn.all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        out = (centred / torch.sqrt(var + self.eps).view(shape)).to(x.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


