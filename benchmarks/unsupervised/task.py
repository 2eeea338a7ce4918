"""Tables 1 and 2: unsupervised segmentation with STEGO (Cityscapes-27, Potsdam-3) and CAUSE-TR (Cityscapes-27,
VOC-21) on frozen backbones.

Configurations live in ``profiles/<task>/{paper,smoke}.yaml`` beside this file (shared protocol in
``profiles/_base_/``). STEGO's loss
weights depend on the backbone (SINDER appendix Table 7): ``loss_variant`` picks the row from the backbone's
role — "sinder" for a checkpoint whose metadata says SINDER repaired it, "register" when it has register tokens,
else "dinov2" — never from its label or file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.core.preprocessing import patch_multiple, preprocessing_of
from benchmarks.core.registry import Metric, Task, register_task

LOSS_VARIANTS = ("dinov2", "register", "sinder")
TASK_NAMES = {("stego", "cityscapes"): "stego_cityscapes", ("stego", "potsdam"): "stego_potsdam",
              ("cause", "cityscapes"): "cause_cityscapes", ("cause", "voc2012"): "cause_voc"}  # fmt: skip


def resolve_config(method: str, dataset_key: str, profile: str, overrides=None) -> dict[str, Any]:
    """The task's profile (``profiles/<task>/<profile>.yaml``) with ``overrides``; CAUSE's lrs as its official
    scripts set them (:func:`_cause_ddp`)."""
    from benchmarks.core.task_config import load_task_config

    from .schema import check_unsupervised

    name = TASK_NAMES[method, dataset_key]
    cfg = load_task_config(Path(__file__).parent, name, profile, overrides)
    check_unsupervised(method, cfg, f"task {name} (profile {profile})")  # types and ranges, at preflight
    return _cause_ddp(cfg) if method == "cause" else cfg


def _cause_ddp(cfg: dict[str, Any]) -> dict[str, Any]:
    """CAUSE's stage batch sizes and lrs as the model the official scripts save is trained (``ddp: reference``).

    The official scripts spawn ``ddp_processes`` (4) processes with ``lr = 1e-3 x 4`` and a DistributedSampler,
    wrap the modules in DistributedDataParallel and then train ``.module``: DDP's forward never runs, so the
    gradients are never averaged (its construction only copied rank 0's initial weights). Each process trains
    its own model, and rank 0 saves its model: batch ``batch_size`` (16), lr x 4, each epoch on a random
    1/``ddp_processes`` of the set (its sampler share). So under ``reference`` the batch stays the profile's
    (the model's batch, split over the ranks of this run), the lr is multiplied and an epoch is a
    1/``ddp_processes`` share of the items (``cause._schedule``); ``single`` reads the numbers as one process
    on the whole set. The per-process values are kept beside them."""
    mode = cfg.get("ddp", "single")
    if mode not in ("reference", "single"):
        raise ValueError(f"cause config ddp={mode!r}: use reference (the official 4-process scripts) or single")
    n = int(cfg.get("ddp_processes", 1)) if mode == "reference" else 1
    cfg["ddp_processes"] = n
    for stage in ("stage1", "stage2", "stage3"):
        st = cfg[stage]
        st["batch_size_per_process"], st["lr_per_process"] = st["batch_size"], st["lr"]
        st["lr"] = st["lr"] * n
    return cfg


def loss_variant(backbone, role: dict | None = None) -> str:
    """Which backbone row of appendix Table 7 applies: sinder, register or dinov2 (by role, see sinder.models.weights)."""
    role = role or getattr(backbone, "weights_role", None) or {}
    if role.get("kind") == "repair" and role.get("remedy") == "sinder":
        return "sinder"
    if backbone.num_register_tokens > 0:
        return "register"
    return "dinov2"


def _open(ctx, cfg: dict[str, Any], split: str):
    from benchmarks.data import open_dataset

    return open_dataset(cfg["dataset"], ctx.dataset_root(cfg["dataset"]), split)


class _UnsupervisedTask(Task):
    method = ""
    dataset_key = ""

    def datasets_needed(self, profile: str) -> list[str]:
        cfg = self.config(profile)
        return [f"{cfg['dataset']}:{cfg['train_split']}", f"{cfg['dataset']}:{cfg['val_split']}"]

    def config(self, profile: str, overrides=None) -> dict[str, Any]:
        return resolve_config(self.method, self.dataset_key, profile, overrides)

    def disk_bytes(self, profile, config, backbone, images) -> int:
        """The training crops' token maps when cached on disk (TokenSource's rule: ``feature_cache`` true, or
        auto and at most ``max_cache_gb``) and, for STEGO, the pooled features its neighbours come from."""
        from benchmarks.core.disk import FLOAT32, feature_bytes

        from .data import parse_crops

        crops = sum(c.count for c in parse_crops(config["train_crops"])) or 1
        n = images(f"{config['dataset']}:{config['train_split']}") * crops
        res = int(config.get("train_resolution", config.get("resolution", 0)))
        tokens = n * backbone.embed_dim * (res // backbone.patch_size) ** 2 * FLOAT32
        cache = config.get("feature_cache", "auto")
        cached = bool(cache) if cache != "auto" else tokens <= float(config.get("max_cache_gb", 0)) * 1e9
        pooled = feature_bytes(n, backbone.embed_dim) if self.method == "stego" else 0
        return (tokens if cached else 0) + pooled


def _at_patch_size(config, keys, patch_size: int) -> dict[str, Any]:
    """``config`` with the resolutions under ``keys`` rounded up to the backbone's patch size (the profiles give
    multiples of 14: 56 is no input for a patch-16 model, 64 is)."""
    return {**config, **{k: patch_multiple(config[k], patch_size) for k in keys}}


def _note_rounding(result: dict[str, Any], config, keys, patch_size: int) -> dict[str, Any]:
    """The record says which resolutions ran other than the profile's (``hparams.resolutions_at_patch_size``)."""
    rounded = {k: patch_multiple(config[k], patch_size) for k in keys}
    changed = {k: v for k, v in rounded.items() if v != config[k]}
    if changed:
        result.setdefault("hparams", {})["resolutions_at_patch_size"] = changed
    return result


class _StegoTask(_UnsupervisedTask):
    method = "stego"
    # 2: a step's randomness drawn for the global batch (same training on any number of ranks)
    # 3: STEGO's checkpoint selection (every 400 steps, lagged score, top 2, validation at 320), float32, the
    #    epoch's last partial batch kept
    version = "3"
    table = "table1"
    metrics = (
        Metric("cluster_miou", True, "unsupervised cluster probe mIoU (%), Hungarian-matched, with CRF"),
        Metric("cluster_acc", True, "unsupervised cluster probe pixel accuracy (%), with CRF"),
        Metric("linear_miou", True, "supervised linear probe mIoU (%), for reference, with CRF"),
        Metric("linear_acc", True, "supervised linear probe pixel accuracy (%), with CRF"),
    )

    def run(self, backbone, ctx) -> dict[str, Any]:
        from .data import SegmentationView, parse_crops
        from .stego import run_stego, selection_resolution

        pre = preprocessing_of(backbone)
        resolutions = ("train_resolution", "knn_resolution", "eval_resolution")
        cfg = _at_patch_size(ctx.config, resolutions, pre.patch_size)
        variant = loss_variant(backbone, getattr(ctx, "backbone_role", None))
        cfg["loss"] = dict(cfg["loss_weights"][variant])
        crops = parse_crops(cfg["train_crops"])
        train_base = _open(ctx, cfg, cfg["train_split"])
        name = f"{cfg['dataset']}:{cfg['train_split']}"
        views = {
            key: SegmentationView(base, res, crop, cfg["resize"], cfg["interpolation"], name=n, preprocessing=pre)
            for key, base, res, crop, n in (
                ("train", train_base, cfg["train_resolution"], crops, name),
                ("knn", train_base, cfg["knn_resolution"], crops, name),
                ("val", _open(ctx, cfg, cfg["val_split"]), cfg["eval_resolution"], (),
                 f"{cfg['dataset']}:{cfg['val_split']}"),
            )
        }  # fmt: skip
        # the checkpoint selection validates at STEGO's 320 centre crop (rounded up to the patch size)
        select_res = selection_resolution(cfg, int(backbone.patch_size))
        select_view = views["val"]
        if select_res != views["val"].resolution:
            select_view = SegmentationView(views["val"].base, select_res, (), cfg["resize"], cfg["interpolation"],
                                           name=f"{cfg['dataset']}:{cfg['val_split']}", preprocessing=pre)  # fmt: skip
        result = run_stego(backbone, ctx, cfg, views["train"], views["knn"], views["val"], cfg["n_classes"], variant,
                           select_view=select_view)  # fmt: skip
        return _note_rounding(result, ctx.config, resolutions, pre.patch_size)


@register_task
class StegoCityscapes(_StegoTask):
    name = "stego_cityscapes"
    title = "STEGO on Cityscapes-27 (five-cropped train 392, val 560), frozen backbone"
    dataset_key = "cityscapes"


@register_task
class StegoPotsdam(_StegoTask):
    name = "stego_potsdam"
    title = "STEGO on Potsdam-3 (train 392, val 560), frozen backbone"
    dataset_key = "potsdam"


class _CauseTask(_UnsupervisedTask):
    method = "cause"
    # 2: global-batch randomness; ddp: reference trains one official process's model (batch 16)
    # 3: rank 0's sampler share is ceil(N / 4) and each epoch's last partial batch is trained on (as official)
    version = "3"
    table = "table2"
    metrics = (
        Metric("miou", True, "cluster mIoU (%) without CRF"),
        Metric("map", True, "CAUSE's mAP (%) without CRF: mean per-class precision of the matched clusters"),
        Metric("acc", True, "pixel accuracy (%) without CRF"),
        Metric("crf_miou", True, "cluster mIoU (%) with CRF"),
        Metric("crf_map", True, "CAUSE's mAP (%) with CRF"),
        Metric("crf_acc", True, "pixel accuracy (%) with CRF"),
    )

    def run(self, backbone, ctx) -> dict[str, Any]:
        from .cause import run_cause
        from .data import SegmentationView, parse_crops

        pre = preprocessing_of(backbone)
        cfg = _at_patch_size(ctx.config, ("resolution",), pre.patch_size)
        res = cfg["resolution"]
        train = SegmentationView(_open(ctx, cfg, cfg["train_split"]), res, parse_crops(cfg["train_crops"]),
                                 cfg["resize"], cfg["interpolation"], name=f"{cfg['dataset']}:{cfg['train_split']}",
                                 preprocessing=pre)  # fmt: skip
        val = SegmentationView(_open(ctx, cfg, cfg["val_split"]), res, (), cfg["resize"], cfg["interpolation"],
                               name=f"{cfg['dataset']}:{cfg['val_split']}", preprocessing=pre)  # fmt: skip
        return _note_rounding(run_cause(backbone, ctx, cfg, train, val, cfg["n_classes"]), ctx.config, ("resolution",),
                              pre.patch_size)


@register_task
class CauseCityscapes(_CauseTask):
    name = "cause_cityscapes"
    title = "CAUSE-TR on Cityscapes-27 (322, five-cropped train), frozen backbone"
    dataset_key = "cityscapes"


@register_task
class CauseVOC(_CauseTask):
    name = "cause_voc"
    title = "CAUSE-TR on PASCAL VOC 2012 (21 classes, 322), frozen backbone"
    dataset_key = "voc2012"
