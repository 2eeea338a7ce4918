"""Singular-value parametrization of linear layers (Section 4.2 of the paper).

Every ``nn.Linear`` in the transformer blocks becomes ``W = U diag(S + delta) V^T`` where U, S, V^T are frozen
buffers from the SVD of the pre-trained weight and ``delta`` (initialised to 0) is the only trainable tensor,
as in the official code. The ``qkv`` projection is split into its q, k and v row blocks, each with its own SVD,
so that the q and k singular values can stay fixed while v's train. ``fold_back`` turns the model back into
plain ``nn.Linear`` layers, so the repaired checkpoint has exactly the keys of the input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sinder.models.adapter import BLOCK_LINEARS, BLOCK_PARTS

# What is trainable: the settings of the paper's Table 6 (and the default of Algorithm 1).
TRAINABLE_SETTINGS = {
    "singular_values_except_qk",  # default: every linear layer's singular values except q and k
    "singular_values",  # every linear layer's singular values, q and k included
    "singular_values_and_biases",  # Table 6, first row: singular values and biases of all layers
}


class SVDLinear(nn.Module):
    """A linear layer stored as row blocks ``[U_j diag(S_j + delta_j) V_j^T]_j`` with only the deltas trainable.

    The forward pass uses the factors directly (``x V^T`` scaled, then ``U``), which costs about what the dense
    product costs and never materialises the weight.
    """

    def __init__(self, linear: nn.Linear, parts: int = 1, trainable_parts: tuple[bool, ...] | None = None):
        super().__init__()
        weight = linear.weight.detach()
        if weight.shape[0] % parts:
            raise ValueError(f"cannot split {weight.shape[0]} output rows into {parts} equal parts")
        trainable_parts = trainable_parts or (True,) * parts
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.parts = parts
        # SVD in float64: the folded weight must reproduce the original to float32 precision.
        for j, block in enumerate(weight.double().chunk(parts, dim=0)):
            u, s, vt = torch.linalg.svd(block, full_matrices=False)
            self.register_buffer(f"U{j}", u.to(weight.dtype))
            self.register_buffer(f"S{j}", s.to(weight.dtype))
            self.register_buffer(f"Vt{j}", vt.to(weight.dtype))
            delta = nn.Parameter(torch.zeros_like(s, dtype=weight.dtype), requires_grad=trainable_parts[j])
            self.register_parameter(f"delta{j}", delta)
        # The pre-trained weight, kept on the host and outside the state dict: folding back adds the learned
        # change to it, so whatever did not train comes back bit for bit.
        self.original_weight = weight.to("cpu", copy=True)
        self.bias = None
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def factors(self) -> Iterator[tuple[Tensor, Tensor, Tensor, nn.Parameter]]:
        for j in range(self.parts):
            yield getattr(self, f"U{j}"), getattr(self, f"S{j}"), getattr(self, f"Vt{j}"), getattr(self, f"delta{j}")

    def deltas(self) -> list[nn.Parameter]:
        return [f[3] for f in self.factors()]

    def forward(self, x: Tensor) -> Tensor:
        outs = [F.linear(F.linear(x, vt) * (s + delta), u) for u, s, vt, delta in self.factors()]
        out = outs[0] if self.parts == 1 else torch.cat(outs, dim=-1)
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def folded_weight(self) -> Tensor:
        """W + U diag(delta) V^T: the weight this layer now computes, exact where delta is zero."""
        change = torch.cat([(u * delta) @ vt for u, _, vt, delta in self.factors()], dim=0)
        return self.original_weight.to(change) + change

    def to_linear(self) -> nn.Linear:
        weight = self.folded_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


# The one definition of a "block linear layer", shared by the repair's parametrization, the clamp (Appendix B)
# and Figure 7: the weight of a block's attention qkv / proj or MLP w12 / w3 / fc1 / fc2 (DINOv2's key names,
# optionally chunked as blocks.<chunk>.<i>). Biases, norms and layer scales are not.
# The layer names are the model adapter's (sinder.models.adapter.BLOCK_LINEARS): every family's blocks have them.
BLOCK_LINEAR_KEY = re.compile(r"(^|\.)blocks\.(\d+\.)?\d+\.(" + "|".join(re.escape(n) for n in BLOCK_LINEARS)
                              + r")\.weight$")  # fmt: skip


def is_block_linear(key: str, tensor: Tensor) -> bool:
    """True for a state-dict entry that is a block linear layer's weight."""
    return tensor.ndim == 2 and BLOCK_LINEAR_KEY.search(key) is not None


def _block_linears(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute) of every block linear layer of ``model`` (``is_block_linear`` on its key)."""
    found = []
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            key = f"{name}.{attr}.weight" if name else f"{attr}.weight"
            if isinstance(child, nn.Linear) and is_block_linear(key, child.weight):
                found.append((module, attr))
    return found


def parametrize_singular_values(model: nn.Module, trainable: str = "singular_values_except_qk") -> list[str]:
    """Swap every block linear for an SVDLinear and freeze everything but the chosen deltas (and biases).

    Returns the names of the trainable parameters.
    """
    if trainable not in TRAINABLE_SETTINGS:
        raise ValueError(f"trainable={trainable!r}: choose one of {sorted(TRAINABLE_SETTINGS)}")
    for param in model.parameters():
        param.requires_grad_(False)
    for parent, attr in _block_linears(model):
        linear = getattr(parent, attr)
        if attr == BLOCK_PARTS["qkv"].rpartition(".")[2]:  # the fused q/k/v projection
            train_qk = trainable != "singular_values_except_qk"
            svd = SVDLinear(linear, parts=3, trainable_parts=(train_qk, train_qk, True))
        else:
            svd = SVDLinear(linear)
        if trainable == "singular_values_and_biases" and svd.bias is not None:
            svd.bias.requires_grad_(True)
        setattr(parent, attr, svd)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def svd_layers(model: nn.Module) -> dict[str, SVDLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SVDLinear)}


def fold_back(model: nn.Module) -> nn.Module:
    """Replace every SVDLinear by the plain nn.Linear it now represents (in place)."""
    for name, svd in list(svd_layers(model).items()):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, svd.to_linear())
    return model


def singular_value_changes(model: nn.Module) -> dict[str, Tensor]:
    """Per SVD layer (and q/k/v part), the learned change of each singular value (Figure 7 of the paper)."""
    changes = {}
    for name, svd in svd_layers(model).items():
        labels = ["q", "k", "v"] if svd.parts == 3 else [""]
        for label, (_, _, _, delta) in zip(labels, svd.factors()):
            changes[f"{name}.{label}" if label else name] = delta.detach().cpu().clone()
    return changes
