"""The defect census task: high-norm tokens and Eq. 5 singular defects per block on held-out images.

Per image and block: the patch tokens before the final norm (``sinder.defects.detect.patch_token_grids``, which runs
the model's ``get_intermediate_layers`` so an inference-time remedy is active), the number of high-norm tokens
(``sinder.defects.detect.high_norm_mask``, independent of any direction) and of Eq. 5 defects along the block's
singular defect direction of the model's own weights (``sinder.defects.detect.find_defects``). The metrics are means
per image; the remedy's cost (extra inference tokens, seconds to make it from its base) rides along so the
remedies table can show it. The counting is ``sinder.defects.census``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.core.registry import Metric, Task, register_task


@dataclass
class CensusProfile:
    """What ``defect_census`` reads from its profile: the types and ranges check_schema holds it to."""

    split: str
    n_images: int
    resolution: int
    mu: float
    min_ratio: float
    eq5_mu: float
    exclude_border: bool
    n_samples: int
    batch_size: int


CENSUS_RANGES: dict[str, Any] = {"split": ("train", "val"), "n_images": (1, None), "resolution": (1, None),
                                 "mu": "positive", "min_ratio": "positive", "eq5_mu": "positive",
                                 "n_samples": (1, None), "batch_size": (1, None)}  # fmt: skip


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

    def config(self, profile: str, overrides=None) -> dict[str, Any]:
        """The profile, each key checked against CensusProfile (types and ranges) at preflight."""
        from benchmarks.core.task_config import check_schema

        config = super().config(profile, overrides)
        check_schema(CensusProfile, config, f"task {self.name} (profile {profile})", CENSUS_RANGES)
        return config

    def run(self, backbone, ctx) -> dict[str, Any]:
        from benchmarks.core.preprocessing import preprocessing_of
        from benchmarks.data import open_dataset
        from sinder.defects.census import census
        from sinder.defects.linearize import singular_defect_directions
        from sinder.utils.images import resize_center_crop, to_normalized_tensor

        cfg = ctx.config
        dataset = open_dataset("imagenet", ctx.dataset_root("imagenet"), cfg["split"])
        step = max(1, len(dataset) // cfg["n_images"])
        indices = list(range(0, len(dataset), step))[: cfg["n_images"]]
        pre = preprocessing_of(backbone)
        images = [to_normalized_tensor(resize_center_crop(dataset[i][0].convert("RGB"), cfg["resolution"]), pre.mean,
                                       pre.std) for i in indices]  # fmt: skip
        cache = ctx.feature_cache.parent / "directions" if ctx.feature_cache else None
        directions = singular_defect_directions(backbone, n_samples=cfg["n_samples"], seed=0, cache_dir=cache)
        counts = census(backbone, range(len(images)), images.__getitem__, directions, mu=cfg["eq5_mu"],
                        exclude_border=cfg["exclude_border"], high_norm_z=cfg["mu"], min_ratio=cfg["min_ratio"],
                        batch_size=cfg["batch_size"])  # fmt: skip
        n = max(1, len(images))  # means per image
        per_block = {"high_norm": [c / n for c in counts["high_norm_tokens_per_layer"]],
                     "defects": [c / n for c in counts["eq5_defects_per_layer"]]}  # fmt: skip
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

