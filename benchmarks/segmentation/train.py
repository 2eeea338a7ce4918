"""Train the linear head with mmengine's Runner and evaluate it (single scale, and with test-time aug).

The segmentor is built from the resolved config through mmseg's registry, the caller's ViT is attached to
its backbone wrapper, and the instance is handed to the Runner (which accepts a module as ``model``). Under
torchrun the Runner runs with ``launcher='pytorch'`` and reuses the process group the suite runner created.
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.segmentation.mmseg_env import ensure_mmseg

RUNNER_KEYS = (
    "work_dir", "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg", "test_cfg",
    "auto_scale_lr", "optim_wrapper", "param_scheduler", "val_evaluator", "test_evaluator", "default_hooks",
    "custom_hooks", "data_preprocessor", "load_from", "resume", "launcher", "env_cfg", "log_processor",
    "log_level", "visualizer", "default_scope", "randomness",
)  # fmt: skip


def build_segmentor(cfg, backbone: nn.Module) -> nn.Module:
    """The EncoderDecoder of ``cfg.model`` with ``backbone`` attached to its FrozenViTBackbone."""
    ensure_mmseg()
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope(cfg.get("default_scope", "mmseg"))
    # Built from a ConfigDict: a plain dict breaks EncoderDecoder's test_cfg.mode lookup at inference.
    with _quiet():
        segmentor = MODELS.build(ConfigDict(copy.deepcopy(cfg.model)))
    if segmentor.backbone._vit is None:
        segmentor.backbone.attach(backbone)
    return segmentor


def build_runner(cfg, model: nn.Module, *, test_pipeline: list | None = None, name: str = "seg",
                 progress: bool = False):  # fmt: skip
    """An mmengine Runner over ``model`` (a module) with the training and test loops, hooks and data of ``cfg``.

    No validation loop: the test loop (on the val split) evaluates once after training. ``test_pipeline``
    replaces the test dataloader's pipeline (test-time augmentation). ``progress``: a progress bar over the
    training and test iterations (:class:`benchmarks.segmentation.progress.ProgressBarHook`).
    """
    ensure_mmseg()
    from mmengine.runner import Runner

    skip = {"val_dataloader", "val_cfg", "val_evaluator"}
    kwargs: dict[str, Any] = {
        key: copy.deepcopy(cfg.get(key)) for key in RUNNER_KEYS if key not in skip and cfg.get(key) is not None
    }
    if test_pipeline is not None:
        # TestTimeAug mutates its transform lists in place: always hand it a fresh copy.
        kwargs["test_dataloader"].dataset.pipeline = copy.deepcopy(test_pipeline)
    if progress:
        from benchmarks.segmentation.progress import ProgressBarHook

        bar = ProgressBarHook("mmseg tta" if name == "tta" else "mmseg")
        kwargs["custom_hooks"] = [*(kwargs.get("custom_hooks") or []), bar]
    # A unique name: a second Runner in the same second must not reuse the first one's logger and visualizer.
    return Runner(model=model, experiment_name=f"{name}-{uuid.uuid4().hex[:8]}", cfg=cfg, **kwargs)


@contextlib.contextmanager
def _quiet():
    # Deprecation notices mmseg 1.2.2 raises about its own defaults; they say nothing about this run.
    with warnings.catch_warnings():
        for message in ("``build_loss`` would be deprecated", "Default ``avg_non_ignore`` is False",
                        "`reduce_zero_label` will be deprecated", "The shape of value will convert"):  # fmt: skip
            warnings.filterwarnings("ignore", message=re.escape(message))
        yield


def _iou_metrics(raw: dict[str, float]) -> dict[str, float]:
    # IoUMetric reports aAcc, mIoU, mAcc in percent; keep exactly those, as floats.
    return {key: float(raw[key]) for key in ("mIoU", "aAcc", "mAcc") if key in raw}


def tensorboard_visualizer(save_dir: str | Path) -> dict[str, Any]:
    """mmengine's visualizer with its TensorBoard backend beside the default local one: the LoggerHook's
    scalars (``loss``, ``lr``, ``decode.loss_ce``, ... as averaged over its window, at each logging interval)
    go to ``save_dir`` as well as to ``vis_data/scalars.json``."""
    return dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend"),
                                                 dict(type="TensorboardVisBackend", save_dir=str(save_dir))])


def train_and_evaluate(cfg, backbone: nn.Module, *, tta: bool = False, progress: bool = False,
                       tensorboard: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Train the head of ``cfg`` on ``backbone`` and evaluate it on the val split; ``tensorboard``: a folder
    for the training's scalars (:func:`tensorboard_visualizer`), None for none.

    Returns ``{"single_scale": {mIoU, aAcc, mAcc}, "tta": {...} or None, "segmentor": module, "resumed":
    bool}``. Training resumes from the newest whole checkpoint in ``cfg.work_dir`` when there is one.
    """
    ensure_mmseg()
    from benchmarks.segmentation.resume import resume_point

    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    segmentor = build_segmentor(cfg, backbone)
    cfg = copy.deepcopy(cfg)
    cfg.load_from = resume_point(cfg.work_dir)
    cfg.resume = cfg.load_from is not None
    if tensorboard is not None:  # after the caller keyed the work folder by the config: scalars change nothing
        cfg.visualizer = tensorboard_visualizer(tensorboard)
    with _quiet():
        runner = build_runner(cfg, segmentor, name="train", progress=progress)
        runner.train()
        single = _iou_metrics(runner.test())
    result: dict[str, Any] = {"single_scale": single, "tta": None, "segmentor": segmentor, "resumed": cfg.resume}
    if tta:
        result["tta"] = evaluate_tta(cfg, segmentor, progress=progress)
    return result


def evaluate_released(cfg, backbone: nn.Module, head_file: str | Path, *, tta: bool = False) -> dict[str, Any]:
    """Evaluate DINOv2's released head ``head_file`` (an mmseg checkpoint whose ``state_dict`` holds the head
    under ``decode_head.``) on ``backbone`` without training: same result dict as :func:`train_and_evaluate`,
    plus ``head``: ``{source: "released head", file, sha256}``."""
    import torch

    from sinder.models.weights import file_sha256

    ensure_mmseg()
    head_file = Path(head_file)
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    segmentor = build_segmentor(cfg, backbone)
    try:
        checkpoint = torch.load(head_file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"released head {head_file}: cannot read it with torch.load(weights_only=True) ({err})") from err
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else {}
    weights = {k[len("decode_head.") :]: v for k, v in state.items() if k.startswith("decode_head.")}
    if not weights:
        raise ValueError(f"released head {head_file}: no 'decode_head.*' weights; is it a DINOv2 segmentation head?")
    try:
        segmentor.decode_head.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ValueError(f"released head {head_file} does not fit this head/backbone: {str(err).splitlines()[0]}") from err
    cfg = copy.deepcopy(cfg)
    cfg.resume, cfg.load_from = False, None
    with _quiet():
        single = _iou_metrics(build_runner(cfg, segmentor, name="released").test())
    result: dict[str, Any] = {"single_scale": single, "tta": None, "segmentor": segmentor, "resumed": False,
                              "head": {"source": "released head", "file": head_file.name,
                                       "sha256": file_sha256(head_file)}}  # fmt: skip
    if tta:
        result["tta"] = evaluate_tta(cfg, segmentor)
    return result


def evaluate_tta(cfg, segmentor: nn.Module, progress: bool = False) -> dict[str, float]:
    """mIoU/aAcc of ``segmentor`` with the config's ``tta_pipeline`` (scales x flips, averaged softmax)."""
    ensure_mmseg()
    from mmseg.models.segmentors.seg_tta import SegTTAModel

    if not cfg.get("tta_pipeline"):
        raise ValueError("this config has no tta_pipeline: test-time augmentation is a multiscale setting")
    module = getattr(segmentor, "module", segmentor)  # unwrap DDP
    tta_model = SegTTAModel(module=module)
    test_cfg = copy.deepcopy(cfg)
    test_cfg.resume = False
    test_cfg.load_from = None
    with _quiet():
        runner = build_runner(test_cfg, tta_model, test_pipeline=list(cfg.tta_pipeline), name="tta",
                              progress=progress)  # fmt: skip
        return _iou_metrics(runner.test())
