"""Table 4's lr schedule as DINOv2's segmentation ran it: mmcv 1.x, ``lr_config = dict(policy='poly',
warmup='linear', warmup_iters=1500, warmup_ratio=1e-6, power=1.0, min_lr=0.0, by_epoch=False)``."""

import warnings

import pytest
import torch

from benchmarks.core.preprocessing import family_preprocessing
from benchmarks.segmentation.config import load_config, resolve_config

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14


def mmcv1_poly_warmup_lr(base_lr, it, max_iters=40000, warmup_iters=1500, ratio=1e-6, power=1.0, min_lr=0.0):
    """Restated from mmcv 1.x ``mmcv/runner/hooks/lr_updater.py``: ``PolyLrUpdaterHook.get_lr`` gives
    ``(base_lr - min_lr) * (1 - runner.iter / runner.max_iters) ** power + min_lr`` (the "regular" lr of every
    iteration) and, while ``cur_iter < warmup_iters``, ``LrUpdaterHook.get_warmup_lr`` ('linear') returns
    ``regular_lr * (1 - k)`` with ``k = (1 - cur_iter / warmup_iters) * (1 - warmup_ratio)``."""
    regular = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if it < warmup_iters:
        k = (1 - it / warmup_iters) * (1 - ratio)
        return regular * (1 - k)
    return regular


def _lrs_of(scheduler_cfg, base_lr, iterations):
    from mmengine.registry import PARAM_SCHEDULERS

    import benchmarks.segmentation.schedule  # noqa: F401  (registers MMCVPolyLR)

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=base_lr)
    scheduler = PARAM_SCHEDULERS.build({**scheduler_cfg, "optimizer": opt})
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no optimizer steps here
        for _ in range(iterations + 1):
            lrs.append(opt.param_groups[0]["lr"])
            scheduler.step()
    return lrs


def test_paper_schedule_is_mmcv1_poly_with_linear_warmup():
    cfg = load_config("ade20k", "linear")
    (sched,) = cfg.param_scheduler
    base = cfg.optim_wrapper.optimizer.lr
    lrs = _lrs_of(dict(sched), base, 40000)
    for it in (0, 1499, 1500, 40000):
        assert lrs[it] == pytest.approx(mmcv1_poly_warmup_lr(base, it), rel=1e-12, abs=1e-18), it
    assert lrs[0] == pytest.approx(1e-9) and lrs[40000] == 0.0
    # poly decays from iteration 0: at 1500 the lr is already 1500/40000 below the base (mmseg 1.x: the base)
    assert lrs[1500] == pytest.approx(1e-3 * (1 - 1500 / 40000))
    assert all(abs(lrs[i] - mmcv1_poly_warmup_lr(base, i)) <= 1e-15 for i in range(0, 40001, 97))


def test_short_schedule_keeps_the_shape():
    cfg = resolve_config(load_config("voc2012", "linear"), preprocessing=DINOV2,
                         data_root="x", embed_dim=96, work_dir="w",
                         overrides={"iterations": 50, "warmup": 5})  # fmt: skip
    (sched,) = cfg.param_scheduler
    lrs = _lrs_of(dict(sched), 1e-3, 50)
    assert [lrs[i] for i in (0, 4, 5, 49, 50)] == pytest.approx(
        [mmcv1_poly_warmup_lr(1e-3, i, 50, 5) for i in (0, 4, 5, 49, 50)], rel=1e-12, abs=1e-18)
    none = resolve_config(load_config("voc2012", "linear"), preprocessing=DINOV2,
                          data_root="x", embed_dim=96, work_dir="w",
                          overrides={"iterations": 50, "warmup": 0})  # fmt: skip
    assert _lrs_of(dict(none.param_scheduler[0]), 1e-3, 50)[0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match=r"warmup \(50\) must be in \[0, iterations=50\)"):
        resolve_config(load_config("voc2012", "linear"), preprocessing=DINOV2,
                       data_root="x", embed_dim=96, work_dir="w",
                       overrides={"iterations": 50, "warmup": 50})  # fmt: skip
