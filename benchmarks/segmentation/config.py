"""Load a Table 4 config (``configs/*.py``, mmengine format) and resolve it for one run.

The config files hold the paper's protocol. :func:`resolve_config` fills in what depends on the run: the
dataset folder, the backbone's width, mean/std and patch size (the padding multiple),
BN or SyncBN (on CPUs an all-reduce BN: sync_bn.py), the per-rank batch,
workers, the work dir and the seed; and for short schedules (the smoke profile) the iteration count, warmup and a smaller resolution, rescaling
every resolution-bearing field of the pipelines (resize scales, crop, slide window and stride) by one factor;
and, with ``feature_cache``, an un-augmented training pipeline whose crops' backbone maps are cached.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SETTINGS = ("linear", "multiscale")
DATASETS = {"ade20k": "ade20k", "voc2012": "voc2012"}


@dataclass
class SegOverrides:
    """What a profile's ``overrides`` may set (read by resolve_config), typed; the paper profile sets none."""

    crop: int
    iterations: int
    warmup: int
    batch_size: int  # global
    lr: float
    feature_cache: bool
    eval_images: int
    log_level: str
    checkpoint_every: int


OVERRIDE_KEYS = tuple(f.name for f in fields(SegOverrides))
OVERRIDE_RANGES = {"crop": (1, None), "iterations": (1, None), "warmup": (0, None), "batch_size": (1, None),
                   "lr": "positive", "eval_images": (0, None), "checkpoint_every": (1, None),
                   "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}  # fmt: skip


@dataclass
class SegProfile:
    """A segmentation task's profile: which config file, the overrides of it, the backbone's autocast."""

    dataset: str
    setting: str
    overrides: dict
    autocast: str


PROFILE_RANGES = {"dataset": tuple(DATASETS), "setting": SETTINGS}


def config_path(dataset: str, setting: str) -> Path:
    if dataset not in DATASETS or setting not in SETTINGS:
        raise ValueError(
            f"no segmentation config for dataset {dataset!r} / setting {setting!r}; datasets: "
            f"{', '.join(DATASETS)}; settings: {', '.join(SETTINGS)}"
        )
    return CONFIG_DIR / f"{DATASETS[dataset]}_{setting}.py"


def load_config(dataset: str, setting: str):
    """The mmengine ``Config`` of ``configs/<dataset>_<setting>.py`` (the paper protocol, unresolved).

    Its text (``pretty_text``: dumped to the work dir, logged, stored in checkpoints, hashed for the work
    folder, 7 times a run) is not yapf-formatted: formatting took 0.35 s a time, a third of a smoke run."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_path(dataset, setting)))
    data = cfg.to_dict()
    # fromfile drops format_python_code=False for a plain (non-lazy) config file in mmengine 0.10: rebuild.
    return Config(data, cfg_text=cfg.text, filename=cfg.filename, env_variables=cfg.env_variables,
                  format_python_code=False)  # fmt: skip


def _scaled(value: Sequence[int], factor: float) -> tuple[int, ...]:
    return tuple(max(1, round(v * factor)) for v in value)


def _rescale_transform(transform: dict, factor: float, crop: int) -> None:
    kind = transform.get("type")
    if kind in ("RandomResize", "Resize") and transform.get("scale") is not None:
        transform["scale"] = _scaled(transform["scale"], factor)
    elif kind == "RandomCrop":
        transform["crop_size"] = (crop, crop)
    elif kind == "TestTimeAug":
        for group in transform["transforms"]:
            for sub in group:
                _rescale_transform(sub, factor, crop)


def rescale_resolution(cfg, crop: int) -> float:
    """Scale every resolution in ``cfg`` so that the training crop becomes ``crop``; returns the factor."""
    base = int(cfg.model.data_preprocessor.size[0])
    factor = crop / base
    pipelines = [cfg.train_dataloader.dataset.pipeline, cfg.val_dataloader.dataset.pipeline,
                 cfg.test_dataloader.dataset.pipeline, cfg.get("tta_pipeline") or []]  # fmt: skip
    seen: set[int] = set()
    for pipeline in pipelines:
        if id(pipeline) in seen:  # val and test may share one pipeline object: scale it once
            continue
        seen.add(id(pipeline))
        for transform in pipeline:
            _rescale_transform(transform, factor, crop)
    cfg.model.data_preprocessor.size = (crop, crop)
    cfg.model.test_cfg.crop_size = (crop, crop)
    cfg.model.test_cfg.stride = _scaled(cfg.model.test_cfg.stride, factor)
    return factor


# Training transforms that draw random numbers; the un-augmented pipeline replaces or drops each of them.
RANDOM_TRAIN_TRANSFORMS = (
    "RandomResize", "RandomCrop", "RandomFlip", "PhotoMetricDistortion", "RandomRotate", "RandomRotFlip",
    "RandomCutOut", "RandomMosaic", "RandomChoiceResize",
)  # fmt: skip


def unaugmented_train_pipeline(cfg) -> str:
    """Make the training pipeline deterministic; returns a description of what it became, for the record.

    ``RandomResize`` becomes ``Resize`` to its base scale (ratio 1.0, as the test pipeline resizes),
    ``RandomCrop`` becomes a center crop of the same size (no cat_max_ratio retries), flip and photometric
    distortion are dropped. Every draw of an image then gives the same crop, so its backbone maps can be
    cached. Other random transforms are refused rather than silently kept.
    """
    pipeline = cfg.train_dataloader.dataset.pipeline
    out, changes = [], []
    for transform in pipeline:
        kind = transform.get("type")
        if kind == "RandomResize":
            keep_ratio = transform.get("keep_ratio", True)
            out.append(dict(type="Resize", scale=tuple(transform["scale"]), keep_ratio=keep_ratio))
            changes.append(f"resize to {tuple(transform['scale'])} (no random ratio)")
        elif kind == "RandomCrop":
            crop = tuple(transform["crop_size"])
            out.append(dict(type="CenterCrop", crop_size=(crop[1], crop[0])))  # mmcv's CenterCrop takes (w, h)
            changes.append(f"center crop {crop[0]}x{crop[1]}")
        elif kind in ("RandomFlip", "PhotoMetricDistortion"):
            changes.append(f"no {kind}")
        elif kind in RANDOM_TRAIN_TRANSFORMS:
            raise ValueError(
                f"the feature cache needs a deterministic training pipeline, and {kind} has no un-augmented "
                "replacement here: run without feature_cache or remove it from the config"
            )
        else:
            out.append(transform)
    cfg.train_dataloader.dataset.pipeline = out
    return "reduced: " + ", ".join(changes)


def set_schedule(cfg, iterations: int, warmup: int) -> None:
    """Poly to 0 at ``iterations`` from iteration 0, the first ``warmup`` scaled by the linear warm-up (mmcv 1.x's
    PolyLrUpdaterHook, the protocol's shape: schedule.py)."""
    if not 0 <= warmup < iterations:
        raise ValueError(f"warmup ({warmup}) must be in [0, iterations={iterations})")
    (poly,) = cfg.param_scheduler
    poly.max_iters, poly.warmup_iters, poly.end = iterations, warmup, iterations + 1
    cfg.train_cfg.max_iters = iterations
    cfg.train_cfg.val_interval = iterations
    hooks = cfg.default_hooks
    hooks.checkpoint.interval = min(hooks.checkpoint.interval, iterations)
    hooks.logger.interval = min(hooks.logger.interval, max(1, iterations // 4))


def resolve_config(
    cfg,
    *,
    data_root: str | Path,
    embed_dim: int,
    work_dir: str | Path,
    world_size: int = 1,
    sync_bn: bool = False,
    device_type: str = "cuda",
    num_workers: int = 0,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    preprocessing,
):
    """A copy of ``cfg`` ready for one run (see the module docstring). ``preprocessing``: the backbone's
    (``benchmarks.core.preprocessing.Preprocessing``): the data preprocessor's mean/std and the padding multiple
    (its patch size). ``overrides`` (profile values):
    ``crop``, ``iterations``, ``warmup``, ``batch_size`` (global), ``lr``, ``log_level``, ``checkpoint_every``
    (iterations between checkpoints), ``eval_images`` (evaluate
    on the first N images of the val split only), ``feature_cache`` (un-augmented training crops whose backbone
    maps are computed once; the description of the pipeline lands in ``cfg.train_augmentation``)."""
    cfg = copy.deepcopy(cfg)
    cfg.model.data_preprocessor.update(preprocessing.pixel_mean_std())
    cfg.model.backbone.pad_multiple = int(preprocessing.patch_size)
    overrides = dict(overrides or {})
    if "crop" in overrides:
        rescale_resolution(cfg, int(overrides["crop"]))
    if "iterations" in overrides or "warmup" in overrides:
        set_schedule(cfg, int(overrides.get("iterations", cfg.train_cfg.max_iters)),
                     int(overrides.get("warmup", cfg.param_scheduler[0].warmup_iters)))  # fmt: skip
    cfg.train_augmentation = "full: the config's training pipeline"
    if overrides.get("feature_cache"):
        # After the rescale: the center crop takes the (possibly smaller) crop size.
        cfg.train_augmentation = unaugmented_train_pipeline(cfg)
        cfg.model.backbone.cache_train_features = True
    if "lr" in overrides:
        cfg.optim_wrapper.optimizer.lr = float(overrides["lr"])
    if "log_level" in overrides:
        cfg.log_level = overrides["log_level"]
    if "checkpoint_every" in overrides:
        every = int(overrides["checkpoint_every"])
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 iteration (got {every})")
        cfg.default_hooks.checkpoint.interval = min(every, int(cfg.train_cfg.max_iters))

    head = cfg.model.decode_head
    n_maps = len(head.in_index)
    head.in_channels = [embed_dim] * n_maps
    head.channels = embed_dim * n_maps
    # torch's SyncBN runs on GPUs only; on CPUs (gloo) the all-reduce BN of sync_bn.py keeps the global batch's
    # statistics, so N processes train the head one process trains.
    norm = ("SyncBN" if device_type == "cuda" else "CollectiveSyncBN") if sync_bn else "BN"
    head.norm_cfg = dict(type=norm, requires_grad=True)

    batch = int(overrides.get("batch_size", cfg.train_dataloader.batch_size))
    from benchmarks.core.distributed import per_rank_batch

    cfg.train_dataloader.batch_size = per_rank_batch(batch, world_size, "overrides.batch_size")
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg[name]
        loader.num_workers = num_workers
        loader.persistent_workers = num_workers > 0  # torch refuses persistent workers without workers
        # Serializing the annotation list only shares it with worker processes, and runs gc.collect()
        # (0.3 s in a process that has imported mmseg) each time a dataset is built: not without workers.
        loader.dataset.serialize_data = num_workers > 0
        loader.dataset.data_root = str(data_root)
    if overrides.get("eval_images"):
        cfg.test_dataloader = copy.deepcopy(cfg.test_dataloader)  # may be the val loader's object
        cfg.test_dataloader.dataset.indices = int(overrides["eval_images"])
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=seed)
    cfg.launcher = "pytorch" if world_size > 1 else "none"
    if world_size > 1:
        # The ranks' evaluation results are gathered by a collective ("gpu" in mmengine's words; gloo on a CPU),
        # not through a temp folder that mmengine's "cpu" mode creates in the current directory (.dist_test/).
        for name in ("val_evaluator", "test_evaluator"):
            cfg[name] = copy.deepcopy(cfg[name])  # may be one object
            cfg[name].collect_device = "gpu"
    if world_size > 1 and device_type != "cuda":
        # mmengine passes device_ids=[LOCAL_RANK] to DDP by default, which torch rejects for CPU modules.
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    return cfg
