"""NYUd depth and mmseg segmentation under torchrun: 2 gloo processes record the metrics of 1 process (smoke).

Depth: every rank trains on its slice of the same global batches (same images, same augmentation draws: the
stream is a function of the seed and the step), the loss is the mean over fixed groups of ``loss_group``
images whichever rank holds them (DINOv2's per-GPU loss), DDP averages the gradients, and the test images are
sharded with their metric sums all-reduced. So 2 processes compute what 1 does, up to the order of float
additions (gradient all-reduce, metric sums).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from ddp_helpers import one_and_two_processes, torchrun

# Shrunk for the test (same code paths as the smoke profile): 12 iterations; 5 test images (uneven shards).
DEPTH_OPTIONS = {"iterations": 12, "warmup": 3, "eval_images": 5}
SEG_OPTIONS = {"iterations": 6, "warmup": 2, "eval_images": 5}


def assert_same_split(one: dict, two: dict, global_batch: int) -> None:
    """The same global batch and lr in both records, split over 1 and 2 ranks."""
    for key in ("global_batch", "lr"):
        assert two["hparams"][key] == one["hparams"][key], key
    assert one["hparams"]["global_batch"] == global_batch
    assert (one["hparams"]["world_size"], one["hparams"]["batch_per_rank"]) == (1, global_batch)
    assert (two["hparams"]["world_size"], two["hparams"]["batch_per_rank"]) == (2, global_batch // 2)


@pytest.mark.slow
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


def trained_head(record: dict) -> dict:
    """The mmseg checkpoint of the record's last iteration: head weights, BN statistics and RNG states."""
    import torch

    from benchmarks.segmentation.mmseg_env import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    path = Path(record["hparams"]["work_dir"]) / f"iter_{record['hparams']['iterations']}.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["seg_ade20k_linear"])
def test_segmentation_two_processes_record_the_metrics_of_one(tmp_path, task):
    """mmseg's InfiniteSampler hands rank r the items r, r + 2, ... of one shuffled stream, so the 2 ranks' batches
    of a step together are the 1 process's batch; the head's BatchNorm takes the statistics of that global
    batch (SyncBN, on CPUs an all-reduce BN), DDP averages the gradients, and the test images are sharded and
    their results gathered. The smoke linear pipeline is un-augmented (feature cache), so this is exact. With
    augmentation (paper profile, smoke multiscale) it is not, by mmseg's design: each rank draws its transforms
    from its own generators (seeded alike), so an image gets other random crops and flips than in one process.
    """
    pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")
    options = {f"{task}.overrides.{key}": value for key, value in SEG_OPTIONS.items()}
    one, two = one_and_two_processes(tmp_path, task, options)
    one, two = one[task], two[task]
    # mmseg's IoUMetric rounds to 0.01 (percent); measured: equal.
    assert two["metrics"] == pytest.approx(one["metrics"], abs=0.011)
    assert_same_split(one, two, global_batch=4)
    # The metrics are coarse: the trained heads themselves agree, BN running statistics included (measured: at
    # most 4e-6 of each tensor's largest value, from the order of float sums in the all-reduces).
    head_one, head_two = trained_head(one), trained_head(two)
    assert head_one["state_dict"].keys() == head_two["state_dict"].keys()
    for key, value in head_one["state_dict"].items():
        value, other = value.double(), head_two["state_dict"][key].double()
        assert (value - other).abs().max() <= 1e-4 * value.abs().max(), key
    assert len(head_one["meta"]["rng"]) == 1 and len(head_two["meta"]["rng"]) == 2  # every rank's generators


BN_WORKER = textwrap.dedent(
    """
    import sys

    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from benchmarks.core import distributed as D
    from benchmarks.segmentation.sync_bn import CollectiveSyncBatchNorm

    sys.path.insert(0, sys.argv[2])
    from test_dense_ddp import bn_case

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    x, weight = bn_case()
    start, stop = D.shard_range(len(x))
    bn = CollectiveSyncBatchNorm(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    local = x[start:stop].clone().requires_grad_(True)
    out = bn(local)
    (out * weight[start:stop]).sum().backward()  # the sum over ranks is the one-process loss
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    D.all_reduce_sum(grads)
    result = {"out": D.all_gather_cat(out.detach()), "x_grad": D.all_gather_cat(local.grad), "grads": grads,
              "running": torch.cat([bn.running_mean, bn.running_var])}
    if D.rank() == 0:
        save_file(result, sys.argv[1])
    dist.destroy_process_group()
    """
)


def bn_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 5 (uneven shards) whose channels have other means and scales, and a loss weight per output."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 4, generator=gen) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1) + 2.0
    return x, torch.randn(5, 3, 4, 4, generator=gen)


def test_collective_sync_bn_on_two_ranks_is_batchnorm_on_the_whole_batch(tmp_path):
    """The CPU SyncBN of the segmentation head: forward, running statistics and gradients (parameters and input,
    through the shared statistics) of 2 ranks holding 3 + 2 images are nn.BatchNorm2d's on all 5."""
    pytest.importorskip("mmengine", reason="segmentation stack not installed")
    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    script.write_text(BN_WORKER)
    torchrun(str(script), str(tmp_path / "bn.safetensors"), str(Path(__file__).parent), timeout=120)
    two = load_file(str(tmp_path / "bn.safetensors"))

    x, weight = bn_case()
    x.requires_grad_(True)
    bn = torch.nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    out = bn(x)
    (out * weight).sum().backward()
    torch.testing.assert_close(two["out"], out.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two["x_grad"], x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two["grads"], torch.cat([bn.weight.grad, bn.bias.grad]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two["running"], torch.cat([bn.running_mean, bn.running_var]), rtol=1e-5, atol=1e-6)


def test_depth_ranks_slice_the_batches_of_one_process():
    """The 2 ranks' batches of each step, in rank order, are the one process's batch (indices and augmentation
    seeds), from any start step; the steps differ from one another."""
    from itertools import islice

    from benchmarks.depth.train import GlobalBatches

    one = list(islice(GlobalBatches(50, 4, seed=7, start=3, rank=0, world=1), 5))
    ranks = [list(islice(GlobalBatches(50, 4, seed=7, start=3, rank=r, world=2), 5)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == one and all(len(batch) == 2 for batch in ranks[0])
    assert list(islice(GlobalBatches(50, 4, seed=7, start=0, world=1, rank=0), 5))[3:] == one[:2]
    assert len({tuple(batch) for batch in one}) == 5


def test_depth_batch_that_does_not_split_into_loss_groups_is_refused():
    from benchmarks.depth.train import DepthConfig, train_head

    cfg = DepthConfig(head="linear1", iterations=1, warmup=0, batch_size=3, loss_group=2)
    with pytest.raises(ValueError, match=r"batch \(3 = batch_size 3 / 1 ranks\) must be a multiple of loss_group=2"):
        train_head(torch.nn.Identity(), [], cfg, device=torch.device("cpu"))
