"""torchrun parity at the shipped smoke length (issue 24): 2 gloo processes against 1, no shortened schedule.

tests/test_dense_ddp.py checks the multi-process code paths on shortened schedules (12 iterations), where float
order differences have had no time to grow. Here the smoke profiles run as shipped: depth_nyu_linear1's 150
AdamW steps turned DDP's float32 all-reduce order (and the batch's shapes per rank) into 1.1e-3 relative before
its gradients were assembled per loss group in float64 (benchmarks/depth/train.py).
"""

from __future__ import annotations

import pytest
import torch
from ddp_helpers import one_and_two_processes


def _relative(one: dict, two: dict) -> dict[str, float]:
    return {k: abs(two[k] - v) / max(abs(v), 1e-12) for k, v in one.items() if isinstance(v, (int, float))}


@pytest.mark.slow
def test_depth_linear1_two_processes_agree_at_the_shipped_smoke_length(tmp_path):
    from benchmarks.core.registry import get_task

    task = "depth_nyu_linear1"
    assert get_task(task).config("smoke")["iterations"] == 150  # the shipped length, not a shortened one
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same kernels' float order
    try:
        one, two = one_and_two_processes(tmp_path, task)
    finally:
        torch.set_num_threads(before)
    one, two = one[task], two[task]
    # Before (DDP, whole per-rank batches): 1.1e-3 relative (delta1), 3e-4 (rmse). Measured after: 2.5e-16.
    rel = _relative(one["metrics"], two["metrics"])
    assert max(rel.values()) <= 1e-5, rel


# CAUSE (benchmarks/unsupervised) splits each global batch into per-rank shares whose losses are weighted so that
# the averaged gradient is the one-process gradient, but each rank's backward sums over its own rows (and over
# gathered keys and a gathered concept bank) in float32: that order is not one process's, and no per-group
# re-assembly as depth's can restore it without rewriting the training. So the bound that holds is stated:
# measured at the shipped smoke length (stage epochs 4 / 3 / 6, dinov2_tiny_defective, 1 thread a process),
# stages 1 and 2 record the same losses to the printed digits, stage 3's modularity 3.5e-3 relative, and the
# metrics differ by at most 0.10 points (crf_acc; mIoU 0.015, CRF mIoU 0.08, mAP 0.09).
CAUSE_METRIC_POINTS = 0.25  # every metric, in percentage points
CAUSE_STAGE3_REL = 1e-2


@pytest.mark.slow
def test_cause_two_processes_stay_within_the_stated_bound_at_the_shipped_smoke_length(tmp_path):
    from benchmarks.core.registry import get_task

    task = "cause_cityscapes"
    cfg = get_task(task).config("smoke")
    assert [cfg[s]["epochs"] for s in ("stage1", "stage2", "stage3")] == [4, 3, 6]  # as shipped
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one, two = one_and_two_processes(tmp_path, task)
    finally:
        torch.set_num_threads(before)
    one, two = one[task], two[task]
    for name, value in one["metrics"].items():
        assert abs(two["metrics"][name] - value) <= CAUSE_METRIC_POINTS, (name, value, two["metrics"][name])
    for key in ("stage1_modularity", "stage2_contrastive", "stage2_linear"):
        assert two["hparams"][key] == one["hparams"][key], key
    for key in ("stage3_linear", "stage3_modularity"):
        assert two["hparams"][key] == pytest.approx(one["hparams"][key], rel=CAUSE_STAGE3_REL), key
