"""Table 5 tasks: NYU Depth v2 with Linear 1, Linear 4 and DPT heads on a frozen backbone (RMSE, lower is better).

Profiles live in ``profiles/<task>/{paper,smoke}.yaml``. Profile ``paper`` is the DINOv2 protocol
(protocols.md, max_depth 10 m, not the hub heads' 80). Profile ``smoke`` keeps every step of it (augmentation, losses, readout, flip-averaged full-resolution evaluation)
with a small crop, a short schedule and a higher learning rate, on the synthetic NYU twin. The run record also
carries the metrics of predicting the mean training depth everywhere, the floor any head must beat.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.core.registry import Metric, Task, register_task
from benchmarks.core.scalars import scalar_writer
from benchmarks.depth.metrics import LOWER_IS_BETTER, METRICS


class _DepthTask(Task):
    # 2: one global batch stream whatever the world size, loss over DINOv2's per-GPU groups of 2;
    # 3: batches from epochs of the reference's DistributedSampler (no longer drawn with replacement), and each
    #    group's gradient added in float64 (benchmarks/depth/train.py): N processes train what 1 does
    version = "3"
    table = "table5"
    head = ""
    optional_keys = ("eval_images",)  # --cfg-options TASK.eval_images=N: the first N test images only
    # Every metric is declared (the record's direction of each comes from here), RMSE first: Table 5's number.
    metrics = tuple(
        Metric(name, name not in LOWER_IS_BETTER, "averaged over test images")
        for name in ("rmse", "abs_rel", "delta1", *(m for m in METRICS if m not in ("rmse", "abs_rel", "delta1")))
    )

    def datasets_needed(self, profile: str) -> list[str]:
        return ["nyud:train", "nyud:test"]

    def config(self, profile: str, overrides=None) -> dict[str, Any]:
        """DepthConfig's protocol values under the profile's, then ``overrides``; checked by DepthConfig.from_dict
        (so a bad value stops the run at preflight)."""
        from benchmarks.core.task_config import apply_overrides
        from benchmarks.depth.train import DepthConfig

        config = {**DepthConfig.protocol(), **super().config(profile)}
        config = apply_overrides(config, overrides or {}, where=f"task {self.name}", optional=self.optional_keys)
        try:
            DepthConfig.from_dict(config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"task {self.name} (profile {profile}): {err}") from None
        return config

    def disk_bytes(self, profile, config, backbone, images) -> int:
        """The training checkpoint of the head (built on the meta device to count it) and its AdamW state."""
        from benchmarks.core.disk import checkpoint_bytes, module_params
        from benchmarks.depth.train import DepthConfig, make_head

        cfg = DepthConfig.from_dict(dict(config))
        return checkpoint_bytes(module_params(lambda: make_head(cfg, backbone.embed_dim)))

    def released_head_file(self, arch: str) -> str:
        from benchmarks.depth.released import released_head_file

        return released_head_file(arch, self.head)

    def run(self, backbone, ctx) -> dict[str, Any]:
        from benchmarks.core.checkpointing import TrainingCheckpoint, fingerprint
        from benchmarks.core.preprocessing import preprocessing_of
        from benchmarks.data.nyud import NYUDepthV2
        from benchmarks.depth.features import head_blocks
        from benchmarks.depth.metrics import mean_depth_baseline
        from benchmarks.depth.released import load_released_head
        from benchmarks.depth.train import DepthConfig, evaluate, make_head, train_head

        cfg = DepthConfig.from_dict(ctx.config)
        root = ctx.dataset_root("nyud")
        train_set, test_set = NYUDepthV2(root, "train"), NYUDepthV2(root, "test")
        released = None
        if ctx.head_weights is not None:  # DINOv2's released head, inference only
            head = make_head(cfg, int(backbone.embed_dim))
            released = load_released_head(Path(ctx.head_weights) / self.released_head_file(ctx.backbone_name), head)
            head = head.to(ctx.device).eval()
        else:
            checkpoint = TrainingCheckpoint.for_task(ctx, "depth_head", fingerprint(
                ctx.config, ctx.seed, ctx.world_size, ctx.weights_sha256, len(train_set)))  # fmt: skip
            with scalar_writer(ctx, self.name) as scalars:
                head = train_head(backbone, train_set, cfg, device=ctx.device, seed=ctx.seed,
                                  num_workers=ctx.num_workers, log=ctx.log if ctx.progress else None,
                                  checkpoint=checkpoint, amp_dtype=ctx.amp_dtype, scalars=scalars)  # fmt: skip
        metrics = evaluate(backbone, head, test_set, cfg, device=ctx.device, num_workers=ctx.num_workers,
                           amp_dtype=ctx.amp_dtype)  # fmt: skip
        n_images = int(metrics.pop("n_images"))
        baseline = mean_depth_baseline(
            (train_set[i]["depth"] for i in range(len(train_set))),
            (test_set[i]["depth"] for i in range(min(len(test_set), cfg.eval_images or len(test_set)))),
            cfg.min_depth, cfg.max_depth, include_max=cfg.eval_valid_gt == "inclusive",
        )  # fmt: skip
        hparams = {
            "blocks": head_blocks(cfg.head, len(backbone.blocks)),
            "head_parameters": sum(p.numel() for p in head.parameters()),
            # as the linear probe records them: the protocol's (global) batch and lr, and their split
            "global_batch": cfg.batch_size,
            "batch_per_rank": cfg.batch_size // ctx.world_size,
            "world_size": ctx.world_size,
            "lr": cfg.lr,
            "skipped_steps": int(getattr(head, "skipped_steps", 0)),
            "dead_readout_at_init": bool(getattr(head, "dead_at_init", False)),
            "test_images": n_images,
            "features": f"patch tokens + {preprocessing_of(backbone).pooled_feature}, no final norm",
            "pooled_feature": preprocessing_of(backbone).pooled_feature,
            "head": released or {"source": "trained"},
        }
        return {"metrics": metrics, "hparams": hparams, "details": {"mean_depth_baseline": baseline},
                "deviations": cfg.deviations()}  # fmt: skip


@register_task
class DepthNYULinear1(_DepthTask):
    name = "depth_nyu_linear1"
    title = "NYU Depth v2, Linear 1 (last block + class token, 1x1 conv, 256 bins)"
    head = "linear1"


@register_task
class DepthNYULinear4(_DepthTask):
    name = "depth_nyu_linear4"
    title = "NYU Depth v2, Linear 4 (four blocks + class tokens, 1x1 conv, 256 bins)"
    head = "linear4"


@register_task
class DepthNYUDPT(_DepthTask):
    name = "depth_nyu_dpt"
    title = "NYU Depth v2, DPT head on four blocks (regression readout)"
    head = "dpt"
