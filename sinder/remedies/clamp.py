"""Appendix B's sanity check: clamp the singular values of every linear layer in the blocks to at most gamma.

Each weight W = U S V^T becomes U min(S, gamma) V^T, with U and V kept. Only the components above gamma are
touched (W - U_k (S_k - gamma) V_k^T), so a layer whose singular values are all below gamma is returned
bit-identical. A "linear layer" is an ``nn.Linear`` of a block: ``attn.qkv`` (one matrix, as in DINOv2),
``attn.proj``, and the MLP's ``w12``/``w3`` or ``fc1``/``fc2``; biases, norms and layer scales are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from sinder.repair.svd import is_block_linear  # the one definition of a block linear layer


@dataclass
class ClampedLayer:
    key: str
    max_before: float
    max_after: float
    n_clamped: int  # how many singular values were above gamma


def clamp_matrix(weight: Tensor, gamma: float) -> tuple[Tensor, ClampedLayer]:
    """``weight`` with its singular values clamped to ``gamma`` (same dtype), and what changed."""
    w64 = weight.detach().to("cpu", torch.float64)
    u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    above = s > gamma
    info = ClampedLayer("", float(s[0]), float(s.clamp(max=gamma)[0]), int(above.sum()))
    if not above.any():
        return weight.detach().clone(), info
    excess = (s[above] - gamma)[:, None] * vh[above]
    out = (w64 - u[:, above] @ excess).to(weight.dtype)
    return out, info


def gamma_problem(gamma: float) -> str | None:
    """Why ``gamma`` is no singular value bound (not a positive finite number: NaN or infinity would leave
    every weight as it is and call the copy clamped), else None."""
    if not math.isfinite(gamma) or gamma <= 0:
        return "the singular value bound must be positive and finite"
    return None


def clamp_singular_values(
    state_dict_or_model, gamma: float
) -> tuple[dict[str, Tensor], list[ClampedLayer]]:
    """A new state dict (same keys) with every block linear weight clamped to singular values <= gamma."""
    problem = gamma_problem(gamma)
    if problem:
        raise ValueError(f"gamma={gamma}: {problem}")
    state = state_dict_or_model if isinstance(state_dict_or_model, Mapping) else state_dict_or_model.state_dict()
    out: dict[str, Tensor] = {}
    report: list[ClampedLayer] = []
    for key, tensor in state.items():
        if is_block_linear(key, tensor):
            out[key], info = clamp_matrix(tensor, gamma)
            info.key = key
            report.append(info)
        else:
            out[key] = tensor.detach().clone()
    if not report:
        raise ValueError("no block linear weights (blocks.<i>.attn.qkv.weight, ...) found: not a DINOv2 ViT state dict")
    return out, report
