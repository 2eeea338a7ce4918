"""Depth losses of the DINOv2 protocol: the scale-invariant log loss (SigLoss) and the multi-scale gradient loss.

Both read only pixels with valid ground truth: ``0 < gt <= max_depth`` (0 = no measurement). The gradient loss
comes in two readings (config ``gradient_loss``): ``reference``, as DINOv2's code computes it on the (B, 1, H, W)
tensors it receives, so its strides and differences run over the batch and channel axes (it compares image b
with image b + 2 and is zero at <= 2 images per GPU, DINOv2's setting), and ``spatial``, the per-image loss
MegaDepth meant (strides and differences over H and W).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-3  # added inside the logs, as the depth toolbox does, to keep gradients bounded near 0


def valid_mask(target: Tensor, max_depth: float | None) -> Tensor:
    mask = target > 0
    if max_depth is not None:
        mask &= target <= max_depth
    return mask


def sig_loss(pred: Tensor, target: Tensor, max_depth: float | None = 10.0, lam: float = 0.15,
             eps: float = EPS, mean_only: bool = False) -> Tensor:  # fmt: skip
    """``sqrt(Var(g) + lam * mean(g)^2)`` with ``g = log(pred + eps) - log(gt + eps)`` over all valid pixels of
    the batch (``Var`` unbiased, as ``torch.var``). ``mean_only`` gives ``sqrt(lam * mean(g)^2)`` (warm-up)."""
    mask = valid_mask(target, max_depth)
    if not bool(mask.any()):
        return pred.sum() * 0.0  # no valid pixel: a zero that keeps the graph
    g = torch.log(pred[mask] + eps) - torch.log(target[mask] + eps)
    energy = lam * g.mean() ** 2
    if not mean_only:
        energy = energy + (g.var() if g.numel() > 1 else g.sum() * 0.0)
    return torch.sqrt(energy)


GRADIENT_LOSSES = ("reference", "spatial")


def gradient_loss_reference(pred: Tensor, target: Tensor, max_depth: float | None = 10.0, eps: float = EPS) -> Tensor:
    """DINOv2's gradient loss on (B, 1, H, W): the scales are ``x[::s, ::s]`` for s in 1, 2, 4, 6 (batch and
    channel axes) and the differences ``d[i] - d[i+2]`` run over axis 0 (images) and axis 1 (the single channel,
    so none). A scale without a valid pixel is skipped (the reference divides 0 by 0 there)."""
    if pred.dim() != 4:
        raise ValueError(f"the reference gradient loss takes (B, 1, H, W) tensors, got shape {tuple(pred.shape)}")
    return _gradient_matching(pred, target, max_depth, eps, (1, 2, 4, 6), axes=(0, 1))  # images, channels


def gradient_loss(pred: Tensor, target: Tensor, max_depth: float | None = 10.0, strides=(1, 2, 4, 6),
                  eps: float = EPS) -> Tensor:  # fmt: skip
    """Multi-scale gradient matching of the log-depth error (MegaDepth's loss, as the depth toolbox uses it).

    At each stride s (the maps subsampled by ``[..., ::s, ::s]``), with ``d = (log(pred+eps) - log(gt+eps))``
    zeroed outside the valid mask: ``(sum |d[y] - d[y+2]| + sum |d[x] - d[x+2]|) / N``, each difference
    counted only where both pixels are valid and N the valid pixels at that stride; summed over strides.
    Inputs are (B, 1, H, W) or (B, H, W); the subsampling is spatial only (``gradient_loss_reference`` is
    DINOv2's batched reading).
    """
    if pred.dim() == 4:
        pred, target = pred[:, 0], target[:, 0]
    return _gradient_matching(pred, target, max_depth, eps, strides, axes=(1, 2))  # vertical, horizontal


def _gradient_matching(pred: Tensor, target: Tensor, max_depth: float | None, eps: float, strides,
                       axes: tuple[int, int]) -> Tensor:  # fmt: skip
    """Sum over strides of ``sum |d[i] - d[i+2]|`` along each of ``axes`` over the valid count, where the two
    axes are also the ones subsampled by the stride and ``d`` is the masked log-depth error."""
    total = pred.new_zeros(())
    for stride in strides:
        every = tuple(slice(None, None, stride) if a in axes else slice(None) for a in range(max(axes) + 1))
        p, t = pred[every], target[every]
        mask = valid_mask(t, max_depth)
        count = mask.sum()
        if count == 0:
            continue
        maskf = mask.to(p.dtype)
        d = (torch.log(p + eps) - torch.log(t + eps)) * maskf
        terms = []
        for axis in axes:
            lo, hi = (slice(None),) * axis + (slice(None, -2),), (slice(None),) * axis + (slice(2, None),)
            terms.append(((d[lo] - d[hi]).abs() * maskf[lo] * maskf[hi]).sum())
        total = total + (terms[0] + terms[1]) / count
    return total
