"""The smoothness loss of Section 4.1 (Eqs. 6-8): pull each defective token towards its 3x3 neighbourhood.

Defaults follow the official implementation (see docs/protocols.md): the window includes the token
itself, the target and the normaliser carry no gradient, the loss is divided by alpha, the mean norm of the
interior tokens, and tokens on the grid border are never flagged. Each of those is a switch, so the paper's
reading (neighbours only, a plain mean distance) is one argument away.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from sinder.defects.detect import DEFAULT_MU, find_defects

# Discrete Gaussian windows of the official code (3x3 binomial; the usual 5x5 /273 kernel).
_GAUSSIAN = {
    3: torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16,
    5: torch.tensor(
        [
            [1.0, 4.0, 7.0, 4.0, 1.0],
            [4.0, 16.0, 26.0, 16.0, 4.0],
            [7.0, 26.0, 41.0, 26.0, 7.0],
            [4.0, 16.0, 26.0, 16.0, 4.0],
            [1.0, 4.0, 7.0, 4.0, 1.0],
        ]
    )
    / 273,
}
KERNELS = tuple(_GAUSSIAN)  # the neighbourhood sizes the loss supports (and so the repair's `kernel`)


def _windows(grid: Tensor, kernel: int) -> Tensor:
    """(H, W, ...) zero-padded by kernel//2 -> (H, W, ..., kernel, kernel) sliding windows."""
    pad = kernel // 2
    extra = grid.dim() - 2
    padded = F.pad(grid, (0, 0) * extra + (pad, pad, pad, pad))
    return padded.unfold(0, kernel, 1).unfold(1, kernel, 1)


def neighbor_targets(
    tokens_hw: Tensor, nu: Tensor, tau: float = 0.1, kernel: int = 3, include_center: bool = True
) -> Tensor:
    """Eqs. 6-7: each token's target, the softmax(-l/tau) x Gaussian weighted mean of its window (H, W, D).

    Windows are zero-padded at the border with zero weight, so interior targets equal the unpadded ones and
    border targets (needed only when border tokens may be flagged) use the neighbours that exist.
    """
    if kernel not in _GAUSSIAN:
        raise ValueError(f"kernel={kernel}: supported sizes are {sorted(_GAUSSIAN)}")
    logits = (F.normalize(tokens_hw, dim=-1) @ F.normalize(nu.to(tokens_hw), dim=0)).abs()
    prob_windows = _windows(torch.exp(-logits / tau), kernel)  # H, W, k, k; padding has weight 0
    weights = prob_windows / prob_windows.sum(dim=(-1, -2), keepdim=True)
    weights = weights * _GAUSSIAN[kernel].to(weights)
    if not include_center:
        weights[..., kernel // 2, kernel // 2] = 0
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    token_windows = _windows(tokens_hw, kernel)  # H, W, D, k, k
    return (token_windows * weights[:, :, None]).sum(dim=(-1, -2))


def neighbor_loss(
    tokens_hw: Tensor,
    nu: Tensor,
    mu: float = DEFAULT_MU,
    tau: float = 0.1,
    kernel: int = 3,
    normalize_by_alpha: bool = True,
    include_center: bool = True,
    stop_gradient: bool = True,
    exclude_border: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """Eq. 8 on one layer's patch-token grid (H, W, D).

    Returns (loss, mask, target, alpha): loss is None when no token is defective; mask is the H x W defect mask
    of Eq. 5; target the H x W x D neighbour targets; alpha the mean norm of the interior tokens.
    """
    if tokens_hw.dim() != 3:
        raise ValueError(f"tokens_hw must be (H, W, D), got shape {tuple(tokens_hw.shape)}")
    pad = kernel // 2
    mask = find_defects(tokens_hw.detach(), nu, mu=mu, exclude_border=exclude_border, kernel=kernel)
    grad_context = torch.no_grad() if stop_gradient else contextlib.nullcontext()
    with grad_context:
        target = neighbor_targets(tokens_hw, nu, tau=tau, kernel=kernel, include_center=include_center)
    with torch.no_grad():
        interior = tokens_hw[pad : tokens_hw.shape[0] - pad, pad : tokens_hw.shape[1] - pad]
        alpha = interior.norm(dim=-1).mean()
    if not bool(mask.any()):
        return None, mask, target, alpha
    distances = (tokens_hw[mask] - target[mask]).norm(dim=-1)
    loss = distances.mean()
    if normalize_by_alpha:
        loss = loss / alpha
    return loss, mask, target, alpha
