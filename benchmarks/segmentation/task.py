"""Table 4 tasks: ADE20k and VOC2012, linear and multiscale, through mmsegmentation.

Profiles live in ``profiles/<task>/{paper,smoke}.yaml``. Profile ``paper`` runs the config files as they are
(``configs/``: DINOv2's protocol). Profile ``smoke`` shrinks them for a CPU: a small crop (every resolution of the pipelines scaled by the same factor), 100
iterations (multiscale: 60) at batch 4 and a higher learning rate; multiscale keeps the five TTA ratios and
flip but evaluates on the first 4 val images only. Smoke linear also trains on un-augmented crops (fixed resize and center crop,
no flip or photometric distortion) whose frozen-backbone maps are computed once per image and reused every
iteration; the record's ``feature_cache`` and ``train_augmentation`` say so. Everywhere else (paper profile,
multiscale, every evaluation) the backbone runs on every crop.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.core import distributed as D
from benchmarks.core.checkpointing import task_work_dir
from benchmarks.core.registry import Metric, Task, register_task
from benchmarks.segmentation.config import OVERRIDE_KEYS
from benchmarks.segmentation.feature_cache import CacheStats
from sinder.utils.atomic import temp_prefix
from sinder.utils.hashing import short, text_sha256

LOADERS = {"ade20k": ("benchmarks.data.ade20k", "ADE20k"), "voc2012": ("benchmarks.data.voc2012", "VOC2012")}


def dataset_base(name: str, root: Path) -> Path:
    """The folder mmseg's dataset reads (``ADEChallengeData2016`` / ``VOCdevkit/VOC2012``), after checking the
    layout of both splits with our loaders (their errors name what is missing and how to get it)."""
    import importlib

    module, cls = LOADERS[name]
    loader = getattr(importlib.import_module(module), cls)
    loader(root, "train")
    return Path(loader(root, "val").root)


class _SegTask(Task):
    version = "2"  # 2: the lr schedule as mmcv 1.x's PolyLrUpdaterHook (poly from iteration 0, warm-up over it)
    table = "table4"
    metrics = (
        Metric("miou", True, "mean IoU (%) on the val split (mmseg IoUMetric)"),
        Metric("aacc", True, "pixel accuracy (%) on the val split"),
    )
    dataset = ""
    setting = ""
    # --cfg-options may set any key resolve_config reads, e.g. seg_ade20k_linear.overrides.iterations=1000
    optional_keys = tuple(f"overrides.{key}" for key in OVERRIDE_KEYS)

    def datasets_needed(self, profile: str) -> list[str]:
        return [f"{self.dataset}:train", f"{self.dataset}:val"]

    def config(self, profile: str, overrides=None) -> dict[str, Any]:
        from benchmarks.core.task_config import check_schema
        from benchmarks.segmentation.config import (
            OVERRIDE_RANGES,
            PROFILE_RANGES,
            SegOverrides,
            SegProfile,
            config_path,
        )
        from benchmarks.segmentation.mmseg_env import INSTALL_HINT, missing_packages

        missing = missing_packages()
        if missing:
            raise ValueError(f"task {self.name} needs {', '.join(missing)} (not installed): {INSTALL_HINT}")
        config = super().config(profile, overrides)
        where = f"task {self.name} (profile {profile})"
        check_schema(SegProfile, config, where, PROFILE_RANGES)
        check_schema(SegOverrides, config["overrides"], f"{where}: overrides", OVERRIDE_RANGES)
        path = config_path(config["dataset"], config["setting"])  # recorded: the protocol file that ran
        return {"config_file": str(path.relative_to(path.parents[3])), **config}

    def run(self, backbone, ctx) -> dict[str, Any]:
        from benchmarks.segmentation.mmseg_env import ensure_mmseg

        ensure_mmseg()
        data_root = dataset_base(self.dataset, ctx.dataset_root(self.dataset))
        overrides = dict(ctx.config.get("overrides") or {})
        overrides.setdefault("log_level", "WARNING")  # the progress bar, not mmengine's INFO lines, shows training
        if ctx.config.get("checkpoint_every_s") is not None:
            raise ValueError(f"task {self.name}: mmengine checkpoints by iteration: set checkpoint_every, "
                             "not checkpoint_every_s")  # fmt: skip
        if ctx.config.get("checkpoint_every") is not None:
            overrides["checkpoint_every"] = ctx.config["checkpoint_every"]
        work_dir = task_work_dir(ctx)
        # Without a work folder (a direct call): a temp folder, removed after the run, and by the next run's
        # stale-temp sweep if this process is killed.
        base_dir = work_dir or Path(tempfile.mkdtemp(prefix=temp_prefix(self.name)))
        try:
            return self._run(backbone, ctx, data_root, overrides, base_dir)
        finally:
            if work_dir is None:
                shutil.rmtree(base_dir, ignore_errors=True)

    def _run(self, backbone, ctx, data_root, overrides, base_dir: Path) -> dict[str, Any]:
        from benchmarks.core.preprocessing import preprocessing_of
        from benchmarks.core.scalars import run_log_dir
        from benchmarks.segmentation.config import load_config, resolve_config
        from benchmarks.segmentation.train import train_and_evaluate

        cfg = resolve_config(
            load_config(self.dataset, self.setting), data_root=data_root, embed_dim=int(backbone.embed_dim),
            work_dir=base_dir, world_size=ctx.world_size, preprocessing=preprocessing_of(backbone),
            sync_bn=ctx.world_size > 1, device_type=ctx.device.type, num_workers=ctx.num_workers, seed=ctx.seed,
            overrides=overrides,
        )  # fmt: skip
        # Checkpoints of a different resolved config must never be resumed: key the folder by it (all but the
        # checkpoint interval, which does not change what is computed).
        keyed = copy.deepcopy(cfg)
        keyed.default_hooks.checkpoint.interval = 0
        digest = short(text_sha256(keyed.pretty_text.replace(str(base_dir), "")))
        cfg.work_dir = str(base_dir / f"mmseg-{digest}")
        if ctx.head_weights is not None:  # DINOv2's released head, inference only
            from benchmarks.segmentation.train import evaluate_released

            head_file = Path(ctx.head_weights) / self.released_head_file(ctx.backbone_name)
            result = evaluate_released(cfg, backbone, head_file, tta=self.setting == "multiscale")
        else:
            result = train_and_evaluate(cfg, backbone, tta=self.setting == "multiscale", progress=ctx.progress,
                                        tensorboard=run_log_dir(ctx, self.name))  # fmt: skip

        # Record names are lower case like every other task's (mmseg's mIoU -> miou, aAcc -> aacc).
        single = {key.lower(): value for key, value in result["single_scale"].items()}
        tta = None if result["tta"] is None else {key.lower(): value for key, value in result["tta"].items()}
        metrics = dict(tta if tta is not None else single)
        if tta is not None:
            metrics.update({f"{key}_single_scale": value for key, value in single.items()})
        return {"metrics": metrics, "hparams": self._hparams(cfg, result, ctx.world_size)}

    def disk_bytes(self, profile, config, backbone, images) -> int:
        """mmengine's checkpoints of the head (BN + 1x1 conv over the concatenated maps: the last block's for
        linear, four for multiscale) with the optimizer state, the last two kept (max_keep_ckpts)."""
        from benchmarks.core.disk import checkpoint_bytes
        from benchmarks.data import DATASETS

        channels = backbone.embed_dim * (4 if self.setting == "multiscale" else 1)
        classes = int(DATASETS[self.dataset].n_classes or 1)
        return 2 * checkpoint_bytes(channels * classes + classes + 4 * channels)

    def released_head_file(self, arch: str) -> str:
        """DINOv2's official file name, e.g. dinov2_vitg14_ade20k_linear_head.pth (multiscale: ``ms``)."""
        return f"{arch}_{self.dataset}_{'linear' if self.setting == 'linear' else 'ms'}_head.pth"

    def _hparams(self, cfg, result, world_size: int) -> dict[str, Any]:
        head = cfg.model.decode_head
        hparams = {
            "crop": list(cfg.model.data_preprocessor.size),
            "slide_crop": list(cfg.model.test_cfg.crop_size),
            "slide_stride": list(cfg.model.test_cfg.stride),
            "iterations": int(cfg.train_cfg.max_iters),
            "warmup": int(cfg.param_scheduler[0].warmup_iters),
            "lr_schedule": "mmcv 1.x PolyLrUpdaterHook: poly from iteration 0, linear warm-up over it",
            # as the linear probe records them: the protocol's (global) batch and lr (not scaled), and their split
            "global_batch": int(cfg.train_dataloader.batch_size) * world_size,
            "batch_per_rank": int(cfg.train_dataloader.batch_size),
            "world_size": world_size,
            "lr": float(cfg.optim_wrapper.optimizer.lr),
            "weight_decay": float(cfg.optim_wrapper.optimizer.weight_decay),
            "in_index": list(head.in_index),
            "head_channels": int(head.channels),
            "norm": head.norm_cfg["type"],
            "eval_images": int(cfg.test_dataloader.dataset.get("indices") or 0) or "all",
            **feature_cache_record(cfg, result["segmentor"]),
            "resumed": bool(result["resumed"]),
            "head": result.get("head", {"source": "trained"}),
            "work_dir": cfg.work_dir,
        }
        if result["tta"] is not None:
            hparams["tta_ratios"] = list(cfg.tta_ratios)
            hparams["tta_flip"] = True
        return hparams


def feature_cache_record(cfg, segmentor) -> dict[str, Any]:
    """``feature_cache`` (what was cached, or none), ``train_augmentation`` and the cache's counts."""
    backbone = getattr(segmentor, "module", segmentor).backbone
    augmentation = cfg.get("train_augmentation", "full: the config's training pipeline")
    record: dict[str, Any] = {"train_augmentation": augmentation}
    if not backbone.cache_train_features:
        record["feature_cache"] = "none: the backbone runs on every training crop"
        return record
    crop = "x".join(str(v) for v in cfg.model.data_preprocessor.size)
    sha = getattr(backbone.vit, "weights_sha256", "unknown")
    record["feature_cache"] = (
        f"in memory, training only: the frozen backbone's patch maps (blocks {backbone.block_indices}, "
        f"final norm {backbone.norm}, weights sha256 {sha}) of each training image's un-augmented {crop} "
        "crop, keyed by the sha256 of the preprocessed crop; computed on first use, reused every later "
        "iteration; evaluation runs the backbone"
    )
    if D.world_size() > 1:
        record["feature_cache"] += f"; each of the {D.world_size()} ranks caches the crops it draws (stats: rank 0's)"
    cache = backbone.feature_cache  # None when training resumed at its last iteration: nothing was looked up
    record["feature_cache_stats"] = (cache.stats if cache is not None else CacheStats()).as_dict()
    return record


@register_task
class SegADE20kLinear(_SegTask):
    name = "seg_ade20k_linear"
    title = "ADE20k, linear (BN + 1x1 conv on the last block, 512)"
    dataset, setting = "ade20k", "linear"


@register_task
class SegADE20kMultiscale(_SegTask):
    name = "seg_ade20k_multiscale"
    title = "ADE20k, multiscale (last 4 blocks, 640, TTA 1.0-3.0 + flip)"
    dataset, setting = "ade20k", "multiscale"


@register_task
class SegVOCLinear(_SegTask):
    name = "seg_voc_linear"
    title = "PASCAL VOC 2012, linear (BN + 1x1 conv on the last block, 512)"
    dataset, setting = "voc2012", "linear"


@register_task
class SegVOCMultiscale(_SegTask):
    name = "seg_voc_multiscale"
    title = "PASCAL VOC 2012, multiscale (last 4 blocks, 640, TTA 1.0-3.0 + flip)"
    dataset, setting = "voc2012", "multiscale"
