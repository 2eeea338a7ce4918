"""Defect census of a model on a set of images, and the comparison of two censuses (before / after a repair).

Per image and per block it records the direction-free high-norm tokens (``high_norm_mask``: count, median norm,
max / median norm) and the Eq. 5 count along the singular defect directions *of the model being measured*.
Directions from another model would count the defects that model had and miss new ones, so every census
brings (or computes) its own model's directions.

An image is "made worse" when, in some block, it has more high-norm tokens after than before, or its median
token norm grew more than ``MEDIAN_JUMP`` times: a defect covering the whole image raises the median with the
rest and is invisible to any detector relative to the image (the high-norm rule and Eq. 5 both are).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sinder.defects.detect import DEFAULT_MU, HIGH_NORM_Z, find_defects, high_norm_mask, patch_token_grids
from sinder.defects.linearize import DEFAULT_N_SAMPLES

MEDIAN_JUMP = 2.0


@torch.no_grad()
def census(
    model: nn.Module,
    images: Sequence[Any],
    load: Callable[[Any], Tensor],
    directions: Sequence[Tensor],
    mu: float = DEFAULT_MU,
    exclude_border: bool = True,
    kernel: int = 3,
    high_norm_z: float = HIGH_NORM_Z,
    min_ratio: float = 3.0,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Per image and per block: high-norm count, median norm, max/median norm, Eq. 5 count; with totals.

    ``images``: paths (or any keys) that ``load`` turns into (3, R, R) tensors, run ``batch_size`` at a time.
    """
    device = next(model.parameters()).device
    per_image = []
    for start in range(0, len(images), batch_size):
        keys = images[start : start + batch_size]
        grids = patch_token_grids(model, torch.stack([load(key) for key in keys]).to(device))
        for b, key in enumerate(keys):
            row: dict[str, Any] = {"image": str(key), "high_norm": [], "median_norm": [], "max_over_median": [],
                                   "eq5": []}
            for i, grid in enumerate(grids):
                tokens = grid[b].float()
                norms = tokens.norm(dim=-1)
                median = float(norms.median())
                row["high_norm"].append(int(high_norm_mask(tokens, high_norm_z, min_ratio).sum()))
                row["median_norm"].append(round(median, 4))
                row["max_over_median"].append(round(float(norms.max()) / median, 3))
                row["eq5"].append(int(find_defects(tokens, directions[i].to(tokens), mu, exclude_border,
                                                   kernel).sum()))  # fmt: skip
            per_image.append(row)
    depth = len(model.blocks)
    return {
        "images": len(per_image),
        "per_image": per_image,
        "high_norm_tokens_per_layer": [sum(r["high_norm"][i] for r in per_image) for i in range(depth)],
        "eq5_defects_per_layer": [sum(r["eq5"][i] for r in per_image) for i in range(depth)],
        "max_over_median_norm_per_layer": [
            round(sum(r["max_over_median"][i] for r in per_image) / max(len(per_image), 1), 3) for i in range(depth)
        ],
    }


def _removed(before: Sequence[int], after: Sequence[int]) -> float | None:
    total = sum(before)
    return None if total == 0 else round(1.0 - sum(after) / total, 4)


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Which images got worse, and the removed fractions (last block and all blocks), of two censuses."""
    if [r["image"] for r in before["per_image"]] != [r["image"] for r in after["per_image"]]:
        raise ValueError("the two censuses are over different images")
    worse = []
    for b, a in zip(before["per_image"], after["per_image"]):
        reasons = [f"block {i}: {nb} -> {na} high-norm tokens"
                   for i, (nb, na) in enumerate(zip(b["high_norm"], a["high_norm"])) if na > nb]
        reasons += [f"block {i}: median norm {mb:.3g} -> {ma:.3g}"
                    for i, (mb, ma) in enumerate(zip(b["median_norm"], a["median_norm"])) if ma > MEDIAN_JUMP * mb]
        if reasons:
            worse.append({"image": b["image"], "high_norm_last_block": [b["high_norm"][-1], a["high_norm"][-1]],
                          "reasons": reasons})
    hb, ha = before["high_norm_tokens_per_layer"], after["high_norm_tokens_per_layer"]
    return {
        "high_norm_last_block": [hb[-1], ha[-1]],
        "high_norm_removed_fraction_last_block": _removed(hb[-1:], ha[-1:]),
        "high_norm_removed_fraction": _removed(hb, ha),
        "eq5_removed_fraction": _removed(before["eq5_defects_per_layer"], after["eq5_defects_per_layer"]),
        "images_made_worse": len(worse),
        "worse_images": worse,
    }


def format_comparison(before: dict[str, Any], after: dict[str, Any], comparison: dict[str, Any]) -> str:
    """A per-image table (last block: high-norm tokens, max/median norm, Eq. 5) and the worse images."""
    rows = [("image", "high-norm", "max/median", "eq5 (own nu)")]
    for b, a in zip(before["per_image"], after["per_image"]):
        rows.append((Path(b["image"]).name, f"{b['high_norm'][-1]} -> {a['high_norm'][-1]}",
                     f"{b['max_over_median'][-1]:.2f} -> {a['max_over_median'][-1]:.2f}",
                     f"{b['eq5'][-1]} -> {a['eq5'][-1]}"))
    hb, ha = comparison["high_norm_last_block"]
    rows.append(("total (last block)", f"{hb} -> {ha}", "", f"{sum(before['eq5_defects_per_layer'][-1:])} -> "
                 f"{sum(after['eq5_defects_per_layer'][-1:])}"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.append(f"images made worse: {comparison['images_made_worse']} of {before['images']}")
    return "\n".join(lines)


def worse_warning(comparison: dict[str, Any]) -> str | None:
    """One warning naming every image made worse (None when none is)."""
    worse = comparison["worse_images"]
    if not worse:
        return None
    named = "; ".join(f"{Path(w['image']).name} ({w['reasons'][0]}"
                      + (f", +{len(w['reasons']) - 1} more" if len(w["reasons"]) > 1 else "") + ")" for w in worse)
    return f"WARNING: {len(worse)} held-out image(s) made worse by the repair: {named}"


def compare_checkpoints(
    backbone: str,
    first: str | None,
    second: str | None,
    images: Sequence[Path],
    resolution: int,
    mu: float = DEFAULT_MU,
    exclude_border: bool = True,
    kernel: int = 3,
    n_samples: int = DEFAULT_N_SAMPLES,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    method: str = "sampled",
) -> dict[str, Any]:
    """The census of two checkpoints of ``backbone`` (None: its own weights) on ``images``, each with its own
    directions, and their comparison (``second`` measured against ``first``)."""
    import functools

    from sinder.defects.linearize import singular_defect_directions
    from sinder.models.weights import load_backbone
    from sinder.utils.images import load_image

    if not images:
        raise ValueError("no images to take a census of")
    records = []
    for weights in (first, second):
        model = load_backbone(backbone, weights=weights).to(device)
        load = functools.partial(load_image, resolution=resolution, patch_size=model.patch_size)
        directions = singular_defect_directions(model, n_samples=n_samples, seed=seed, method=method,
                                                cache_dir=cache_dir)
        records.append({"weights": weights or "(the backbone's own)", "weights_sha256": model.weights_sha256,
                        **census(model, images, load, directions, mu, exclude_border, kernel)})
    return {"first": records[0], "second": records[1], "comparison": compare(records[0], records[1]),
            "settings": {"backbone": backbone, "resolution": resolution, "mu": mu, "exclude_border": exclude_border,
                         "kernel": kernel, "n_samples": n_samples, "seed": seed, "method": method}}
