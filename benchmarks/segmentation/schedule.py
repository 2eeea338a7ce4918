"""DINOv2's segmentation lr schedule as mmcv 1.x computed it (``PolyLrUpdaterHook`` with linear warm-up).

DINOv2's segmentation configs ran on mmcv 1.x with ``lr_config = dict(policy='poly', warmup='linear',
warmup_iters=1500, warmup_ratio=1e-6, power=1.0, min_lr=0.0, by_epoch=False)``. In mmcv 1.x the poly lr of
iteration ``i`` (0-based) is ``(base - min_lr) * (1 - i / max_iters) ** power + min_lr``, decaying from iteration
0; for ``i < warmup_iters`` the linear warm-up scales that poly lr by ``1 - (1 - i / warmup_iters) *
(1 - warmup_ratio)``. mmseg 1.x's own configs (LinearLR then PolyLR from the end of the warm-up) start the decay
at 1,500 instead (up to 3.9% higher lr), and mmengine's schedulers end one iteration early; this scheduler
computes the mmcv 1.x closed form at every iteration instead.
"""

from __future__ import annotations

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmengine.registry import PARAM_SCHEDULERS


def mmcv_poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 1.0, min_lr: float = 0.0,
                 warmup_iters: int = 0, warmup_ratio: float = 1e-6) -> float:  # fmt: skip
    """The lr mmcv 1.x's PolyLrUpdaterHook (``warmup='linear'``, ``by_epoch=False``) sets for ``iteration``."""
    lr = (base_lr - min_lr) * (1 - iteration / max_iters) ** power + min_lr
    if iteration < warmup_iters:
        lr *= 1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio)
    return lr


class MMCVPolyParamScheduler(_ParamScheduler):
    """Sets ``param_name`` of every group to :func:`mmcv_poly_lr` of its initial value at each iteration."""

    def __init__(self, optimizer, param_name: str, max_iters: int, power: float = 1.0, eta_min: float = 0.0,
                 warmup_iters: int = 0, warmup_ratio: float = 1e-6, begin: int = 0, end: int | None = None,
                 last_step: int = -1, by_epoch: bool = False, verbose: bool = False):  # fmt: skip
        if by_epoch:
            raise ValueError("MMCVPolyLR: by_epoch must be False (DINOv2's schedule counts iterations)")
        if not 0 <= warmup_iters < max_iters:
            raise ValueError(f"warmup ({warmup_iters}) must be in [0, iterations={max_iters})")
        self.max_iters, self.power, self.eta_min = int(max_iters), float(power), float(eta_min)
        self.warmup_iters, self.warmup_ratio = int(warmup_iters), float(warmup_ratio)
        super().__init__(optimizer, param_name, begin=begin, end=max_iters + 1 if end is None else end,
                         last_step=last_step, by_epoch=False, verbose=verbose)  # fmt: skip

    def _get_value(self):
        step = min(self.last_step, self.max_iters)
        return [mmcv_poly_lr(group[f"initial_{self.param_name}"], step, self.max_iters, self.power, self.eta_min,
                             self.warmup_iters, self.warmup_ratio) for group in self.optimizer.param_groups]  # fmt: skip


@PARAM_SCHEDULERS.register_module(force=True)
class MMCVPolyLR(LRSchedulerMixin, MMCVPolyParamScheduler):
    """``dict(type="MMCVPolyLR", max_iters=40000, warmup_iters=1500, warmup_ratio=1e-6, power=1.0, eta_min=0.0)``."""
