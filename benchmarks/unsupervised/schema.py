"""What the STEGO and CAUSE tasks read from their profiles: types and ranges, checked at preflight
(``benchmarks.core.task_config.check_schema``), so ``--cfg-options stego_potsdam.steps=0`` stops the run with one
line before any work. The values themselves live in ``profiles/`` (their sources are cited there)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .crf import BACKENDS
from .data import CROP_KINDS, RESIZE_MODES

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # benchmarks.unsupervised.data._INTERPOLATION
AUTOCASTS = ("float16", "bfloat16", "float32")  # benchmarks.core.job.AUTOCAST
CACHE_MODES = ("auto", True, False)  # benchmarks.unsupervised.tokens.CACHE_MODES


@dataclass
class _Common:
    """The keys STEGO and CAUSE share."""

    dataset: str
    n_classes: int
    train_split: str
    val_split: str
    train_crops: list
    resize: str
    interpolation: str
    crf: bool
    crf_backend: str
    crf_workers: Any  # "auto" or an integer >= 0: checked by check_unsupervised
    crf_params: dict
    cluster_alpha: float
    feature_cache: Any  # auto, true or false
    max_cache_gb: float
    checkpoint_every: int
    autocast: str
    eval_batch_size: int
    dropout: float


@dataclass
class StegoProfile(_Common):
    code_dim: int
    lr: float
    probe_lr: float
    feature_samples: int
    neg_samples: int
    num_neighbors: int
    knn_k: int
    pointwise: bool
    zero_clamp: bool
    stabilize: bool
    correspondence_weight: float
    extra_clusters: int
    selection: str
    val_every: int
    save_every: int
    save_top_k: int
    val_resolution: int
    train_resolution: int
    eval_resolution: int
    knn_resolution: int
    steps: int
    batch_size: int
    loss_weights: dict


@dataclass
class CauseProfile(_Common):
    codebook_size: int
    modularity_temperature: float
    grid_cell: int
    reduced_dim: int
    projection_dim: int
    hidden_dim: int
    heads: int
    ema_momentum: float
    temperature: float
    pos_threshold: float
    neg_threshold: float
    bank_size: int
    bank_keep: float
    map_definition: str
    ddp: str
    ddp_processes: int
    resolution: int
    stage1: dict
    stage2: dict
    stage3: dict


@dataclass
class CauseStage:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    grad_clip: float | None
    lr_step_epochs: int
    lr_gamma: float
    teacher_trainable: bool


COMMON_RANGES: dict[str, Any] = {
    "n_classes": (1, None), "resize": RESIZE_MODES, "interpolation": INTERPOLATIONS, "crf_backend": BACKENDS,
    "cluster_alpha": "positive", "feature_cache": CACHE_MODES, "max_cache_gb": (0, None),
    "checkpoint_every": (1, None), "autocast": AUTOCASTS, "eval_batch_size": (1, None), "dropout": (0, 1),
}  # fmt: skip
STEGO_RANGES: dict[str, Any] = {
    **COMMON_RANGES, "code_dim": (1, None), "lr": "positive", "probe_lr": "positive", "feature_samples": (1, None),
    "neg_samples": (1, None), "num_neighbors": (1, None), "knn_k": (1, None), "correspondence_weight": (0, None),
    "extra_clusters": (0, None), "selection": ("reference", "best", "last"), "val_every": (1, None),
    "save_every": (1, None), "save_top_k": (1, None), "val_resolution": (1, None),
    "train_resolution": (1, None), "eval_resolution": (1, None), "knn_resolution": (1, None), "steps": (1, None),
    "batch_size": (1, None),
}  # fmt: skip
CAUSE_RANGES: dict[str, Any] = {
    **COMMON_RANGES, "codebook_size": (1, None), "modularity_temperature": "positive", "grid_cell": (1, None),
    "reduced_dim": (1, None), "projection_dim": (1, None), "hidden_dim": (1, None), "heads": (1, None),
    "ema_momentum": (0, 1), "temperature": "positive", "pos_threshold": (-1, 1), "neg_threshold": (-1, 1),
    "bank_size": (1, None), "bank_keep": (0, 1), "map_definition": ("cause", "recall"),
    "ddp": ("reference", "single"), "ddp_processes": (1, None), "resolution": (1, None),
}  # fmt: skip
STAGE_RANGES: dict[str, Any] = {"epochs": (1, None), "batch_size": (1, None), "lr": "positive",
                                "weight_decay": (0, None), "grad_clip": "positive", "lr_step_epochs": (1, None),
                                "lr_gamma": "positive"}  # fmt: skip


def check_unsupervised(method: str, config: dict[str, Any], where: str) -> None:
    """A one-line ValueError naming ``where`` and the key unless ``config`` (a STEGO or CAUSE profile with its
    overrides) has every key's type and range."""
    from benchmarks.core.task_config import check_schema

    if method == "stego":
        check_schema(StegoProfile, config, where, STEGO_RANGES)
        for variant, weights in (config.get("loss_weights") or {}).items():
            if not isinstance(weights, dict) or any(isinstance(v, bool) or not isinstance(v, int | float)
                                                    for v in weights.values()):  # fmt: skip
                raise ValueError(f"{where}: loss_weights.{variant}={weights!r}: expected a mapping of numbers")
    else:
        check_schema(CauseProfile, config, where, CAUSE_RANGES)
        for stage in ("stage1", "stage2", "stage3"):
            check_schema(CauseStage, config.get(stage) or {}, f"{where}: {stage}", STAGE_RANGES)
    workers = config.get("crf_workers", 0)
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"{where}: crf_workers={workers!r}: expected auto or an integer >= 0")
    for entry in config.get("train_crops") or []:
        kind, ratio = (entry.get("kind"), entry.get("ratio")) if isinstance(entry, dict) else (
            entry if isinstance(entry, list | tuple) and len(entry) == 2 else (None, None))
        if (kind not in CROP_KINDS or isinstance(ratio, bool) or not isinstance(ratio, int | float)
                or not 0 < ratio <= 1):
            raise ValueError(f"{where}: train_crops entry {entry!r}: expected [KIND, RATIO] with KIND one of "
                             f"{', '.join(CROP_KINDS)} and 0 < RATIO <= 1")  # fmt: skip
