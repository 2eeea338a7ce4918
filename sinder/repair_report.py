"""What a repair did: defect counts before and after on held-out images, and the report beside the checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import atomic_path, atomic_write_text
from .defects import find_defects, high_norm_mask, patch_token_grids


@torch.no_grad()
def defect_census(
    model: nn.Module,
    images: Sequence[Path],
    load: Callable[[Path], Tensor],
    directions: Sequence[Tensor],
    mu: float = 4.0,
    exclude_border: bool = True,
) -> dict[str, Any]:
    """Per block, Eq. 5 defects along ``directions`` and (direction-free) high-norm tokens, summed over images."""
    device = next(model.parameters()).device
    depth = len(model.blocks)
    eq5 = [0] * depth
    high_norm = [0] * depth
    norm_ratio = [0.0] * depth
    for path in images:
        grids = patch_token_grids(model, load(path).unsqueeze(0).to(device))
        for i, grid in enumerate(grids):
            grid = grid[0].float()
            eq5[i] += int(find_defects(grid, directions[i].to(grid), mu, exclude_border).sum())
            high_norm[i] += int(high_norm_mask(grid).sum())
            norms = grid.norm(dim=-1)
            norm_ratio[i] += float(norms.max() / norms.median()) / len(images)
    return {"images": len(images), "eq5_defects_per_layer": eq5, "high_norm_tokens_per_layer": high_norm,
            "max_over_median_norm_per_layer": [round(r, 3) for r in norm_ratio]}


def removed_fraction(before: dict[str, Any], after: dict[str, Any], key: str) -> float | None:
    total = sum(before[key])
    return None if total == 0 else 1.0 - sum(after[key]) / total


def plot_singular_value_changes(changes: dict[str, Tensor], path: Path) -> Path:
    """Figure 7: per layer, the learned change of every singular value (new minus old)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(changes)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(names)), 4.0), dpi=100)
    for x, name in enumerate(names):
        values = changes[name].float().numpy()
        ax.scatter([x] * len(values), values, s=4, alpha=0.6)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_ylabel("change of singular value")
    ax.set_title("SINDER: singular value changes per linear layer")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def write_report(path: Path, report: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(report, indent=2, default=_jsonable))
    return path


def _jsonable(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
