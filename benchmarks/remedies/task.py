"""The defect census task: high-norm tokens and Eq. 5 singular defects per block on held-out images.

Per image and block: the patch tokens before the final norm (``sinder.defects.patch_token_grids``, which runs
the model's ``get_intermediate_layers`` so an inference-time remedy is active), the number of high-norm tokens
(``sinder.defects.high_norm_mask``, independent of any direction) and of Eq. 5 defects along the block's
singular defect direction of the model's own weights (``sinder.defects.find_defects``). The metrics are means
per image; the remedy's cost (extra inference tokens, seconds to make it from its base) rides along so the
remedies table can show it. Kept small on purpose: a per-image census module may replace the counting loop.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from benchmarks.core.registry import Metric, Task, register_task


@register_task
class DefectCensus(Task):
    name = "defect_census"
    table = "remedies"
    title = "Defect census: high-norm tokens and Eq. 5 defects per block (held-out images)"
    metrics = (
        Metric("high_norm_last", False, "high-norm tokens per image at the last block"),
        Metric("high_norm_total", False, "high-norm tokens per image, summed over blocks"),
        Metric("defects_total", False, "Eq. 5 defects per image, summed over blocks"),
        Metric("extra_tokens", False, "tokens the remedy adds at inference"),
        Metric("setup_s", False, "seconds to make the remedy from its base (repair, fit or transform)"),
    )

    def datasets_needed(self, profile: str) -> list[str]:
        return [f"imagenet:{self.config(profile)['split']}"]

    def run(self, backbone, ctx) -> dict[str, Any]:
        from benchmarks.data import open_dataset
        from sinder.images import resize_center_crop, to_normalized_tensor

        cfg = ctx.config
        dataset = open_dataset("imagenet", ctx.dataset_root("imagenet"), cfg["split"])
        step = max(1, len(dataset) // cfg["n_images"])
        indices = list(range(0, len(dataset), step))[: cfg["n_images"]]
        images = [to_normalized_tensor(resize_center_crop(dataset[i][0].convert("RGB"), cfg["resolution"]))
                  for i in indices]  # fmt: skip
        cache = ctx.feature_cache.parent / "directions" if ctx.feature_cache else None
        per_block = census(backbone, images, cfg, device=ctx.device, directions_cache=cache)
        cost = dict(getattr(backbone, "remedy_cost", None) or {"setup_s": 0.0, "extra_tokens": 0})
        metrics = {
            "high_norm_last": per_block["high_norm"][-1],
            "high_norm_total": sum(per_block["high_norm"]),
            "defects_total": sum(per_block["defects"]),
            "extra_tokens": float(cost.get("extra_tokens") or 0),
            "setup_s": float(cost["setup_s"]) if cost.get("setup_s") is not None else math.nan,
        }
        for i, (high, defects) in enumerate(zip(per_block["high_norm"], per_block["defects"])):
            metrics[f"block{i}/high_norm"] = high
            metrics[f"block{i}/defects"] = defects
        if math.isnan(metrics["setup_s"]):
            del metrics["setup_s"]  # not known (a register release's pretraining, a file without its time)
        return {"metrics": metrics, "hparams": {"n_images": len(images)}, "details": {"cost": cost}}


@torch.no_grad()
def census(model, images: list[torch.Tensor], cfg: dict[str, Any], device="cpu", directions_cache=None) -> dict:
    """Mean per image, per block (ascending): ``high_norm`` tokens and Eq. 5 ``defects``."""
    from sinder.defects import find_defects, high_norm_mask, patch_token_grids
    from sinder.linearize import singular_defect_directions

    depth = len(model.blocks)
    directions = singular_defect_directions(model, n_samples=cfg["n_samples"], seed=0, cache_dir=directions_cache)
    high = torch.zeros(depth, dtype=torch.float64)
    defects = torch.zeros(depth, dtype=torch.float64)
    for start in range(0, len(images), cfg["batch_size"]):
        batch = torch.stack(images[start : start + cfg["batch_size"]]).to(device)
        grids = patch_token_grids(model, batch)
        for block, grid in enumerate(grids):
            nu = directions[block].to(grid.device)
            for tokens in grid.float():
                high[block] += int(high_norm_mask(tokens, cfg["mu"], cfg["min_ratio"]).sum())
                defects[block] += int(find_defects(tokens, nu, cfg["eq5_mu"], cfg["exclude_border"]).sum())
    n = max(1, len(images))
    return {"high_norm": (high / n).tolist(), "defects": (defects / n).tolist()}
