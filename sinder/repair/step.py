"""One iteration of the repair (Algorithm 1, lines 4-11): find the first defective block, the neighbour loss
there, and its backward through only the last lambda blocks."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sinder.defects.detect import enough_defects, find_defects
from sinder.defects.loss import neighbor_loss
from sinder.models.adapter import num_prefix_tokens
from sinder.repair.config import RepairConfig


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss or gradient with ``on_nonfinite='stop'``: the last good state has been saved."""


def patch_grid(model: nn.Module, tokens: Tensor, rows: int, cols: int) -> Tensor:
    """The (rows, cols, D) patch-token grid of a (1, prefix+N, D) token tensor."""
    return tokens[0, num_prefix_tokens(model) :].reshape(rows, cols, -1)


@dataclass
class StepResult:
    layer: int | None
    n_defects: int
    loss: float | None
    alpha: float | None
    nonfinite: bool = False


class SinderStep:
    """Algorithm 1, lines 4-11, for one image on a model whose block linears are SVD-parametrized."""

    def __init__(self, model: nn.Module, directions: Sequence[Tensor], config: RepairConfig):
        self.model = model
        self.directions = [d.detach() for d in directions]
        self.config = config

    def _defect_count(self, grid: Tensor, layer: int) -> int:
        cfg = self.config
        return int(find_defects(grid, self.directions[layer].to(grid), cfg.mu, cfg.exclude_border, cfg.kernel).sum())

    def _run_until_defective(self, image: Tensor, keep: int):
        """Run blocks until one has at least max(sigma, 1) defects (the official code moves on when a layer
        has no defect at all, so sigma = 0 behaves as 1).

        Each block runs on a detached copy of its input, so the graph is cut into per-block segments; the
        last ``keep`` segments are kept (older ones are freed as the forward goes on). Returns (layer or None,
        defect count, segments as (input leaf, output) pairs).
        """
        rows, cols = image.shape[-2] // self.model.patch_size, image.shape[-1] // self.model.patch_size
        with torch.no_grad():
            tokens = self.model.prepare_tokens_with_masks(image)
        segments: deque[tuple[Tensor, Tensor]] = deque(maxlen=max(keep, 1))
        with torch.set_grad_enabled(keep > 0):
            for i, block in enumerate(self.model.blocks):
                leaf = tokens.detach().requires_grad_(keep > 0)
                if keep and self.config.grad_checkpointing:
                    out = torch.utils.checkpoint.checkpoint(block, leaf, use_reentrant=False)
                else:
                    out = block(leaf)
                segments.append((leaf, out))
                count = self._defect_count(patch_grid(self.model, out.detach(), rows, cols), i)
                if enough_defects(count, self.config.sigma):
                    return i, count, list(segments)
                tokens = out
        return None, 0, []

    def find_loss_layer(self, image: Tensor) -> tuple[int | None, int]:
        """First block with at least max(sigma, 1) Eq. 5 defects and its count (no gradients)."""
        layer, count, _ = self._run_until_defective(image, keep=0)
        return layer, count

    def __call__(self, image: Tensor) -> tuple[StepResult, Tensor | None]:
        """Forward and loss; returns the result and the loss (None if clear) to pass to ``backward``.

        One forward pass: the graph of only the last lambda blocks is alive at any time, which gives the
        gradients of the official step (all blocks under autograd, early gradients dropped) at lambda blocks'
        memory and without running any block twice.
        """
        cfg = self.config
        keep = cfg.limit_layers or len(self.model.blocks)
        layer, _, self._segments = self._run_until_defective(image, keep)
        if layer is None:
            return StepResult(None, 0, None, None), None
        rows, cols = image.shape[-2] // self.model.patch_size, image.shape[-1] // self.model.patch_size
        with torch.enable_grad():
            loss, mask, _, alpha = neighbor_loss(
                patch_grid(self.model, self._segments[-1][1], rows, cols),
                self.directions[layer].to(image),
                mu=cfg.mu,
                tau=cfg.tau,
                kernel=cfg.kernel,
                normalize_by_alpha=cfg.normalize_by_alpha,
                include_center=cfg.include_center,
                stop_gradient=cfg.stop_gradient_target,
                exclude_border=cfg.exclude_border,
            )
        value = float(loss.detach()) if loss is not None else None
        finite = value is not None and bool(torch.isfinite(loss.detach()))
        return StepResult(layer, int(mask.sum()), value, float(alpha), nonfinite=not finite), loss

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` through the kept segments, last block first, chaining input gradients."""
        grad = None
        for leaf, out in reversed(self._segments):
            if grad is None:
                loss.backward()
            else:
                out.backward(grad)
            grad = leaf.grad
        self._segments = []
