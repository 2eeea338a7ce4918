"""NYUd depth and mmseg segmentation under torchrun: 2 gloo processes record the metrics of 1 process (smoke).

Depth: every rank trains on its slice of the same global batches (same images, same augmentation draws: the
stream is a function of the seed and the step), the loss is the mean over fixed groups of ``loss_group``
images whichever rank holds them (DINOv2's per-GPU loss), DDP averages the gradients, and the test images are
sharded with their metric sums all-reduced. So 2 processes compute what 1 does, up to the order of float
additions (gradient all-reduce, metric sums).
"""

from __future__ import annotations

import pytest
from torchrun_suite import one_and_two_processes

# Shrunk for the test (same code paths as the smoke profile): 12 iterations; 5 test images (uneven shards).
DEPTH_OPTIONS = {"iterations": 12, "warmup": 3, "eval_images": 5}


def assert_same_split(one: dict, two: dict, global_batch: int) -> None:
    """The same global batch and lr in both records, split over 1 and 2 ranks."""
    for key in ("global_batch", "lr"):
        assert two["hparams"][key] == one["hparams"][key], key
    assert one["hparams"]["global_batch"] == global_batch
    assert (one["hparams"]["world_size"], one["hparams"]["batch_per_rank"]) == (1, global_batch)
    assert (two["hparams"]["world_size"], two["hparams"]["batch_per_rank"]) == (2, global_batch // 2)


def test_depth_two_processes_record_the_metrics_of_one(tmp_path):
    task = "depth_nyu_linear4"
    options = {f"{task}.{key}": value for key, value in DEPTH_OPTIONS.items()}
    one, two = one_and_two_processes(tmp_path, task, options)
    one, two = one[task], two[task]
    # Measured: at most 6e-8 relative (rmse 3e-8; gradients all-reduced and metric sums added in another order).
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-5)
    assert one["metrics"] != pytest.approx(one["details"]["mean_depth_baseline"], rel=1e-3)  # it trained
    assert two["hparams"]["test_images"] == one["hparams"]["test_images"] == 5
    assert_same_split(one, two, global_batch=4)
