"""Depth training batches as the reference draws them: epochs of torch's DistributedSampler over the reference's
GPUs (``samples_per_gpu`` images each, DataLoader without drop_last), not draws with replacement."""

from itertools import islice

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from benchmarks.depth.train import GlobalBatches


def reference_epoch(order: list[int], gpus: int, per_gpu: int) -> list[list[int]]:
    """One epoch of the reference's global batches for a shuffled ``order``: torch's own DistributedSampler
    (``shuffle=False`` on the already shuffled order; it pads and subsamples as with shuffle) on every GPU, a
    DataLoader of ``per_gpu`` (drop_last False) on each; step k's global batch is every GPU's k-th batch."""
    loaders = [list(DataLoader(order, batch_size=per_gpu, sampler=DistributedSampler(order, gpus, r, shuffle=False)))
               for r in range(gpus)]  # fmt: skip
    return [sum((loader[k].tolist() for loader in loaders), []) for k in range(len(loaders[0]))]


@pytest.mark.parametrize("n, batch, group", [(21, 4, 2), (50, 4, 1), (37, 16, 2), (16, 16, 2)])
def test_depth_batches_are_the_reference_distributed_sampler_epochs(n, batch, group):
    sampler = GlobalBatches(n, batch, seed=3, start=0, rank=0, world=1, group=group)
    gpus = batch // group
    steps = []
    for epoch in range(2):
        order = sampler.padded_permutation(epoch)[:n].tolist()
        assert sorted(order) == list(range(n))  # a permutation of the set each epoch
        steps += reference_epoch(order, gpus, group)
    drawn = [[i for i, _ in b] for b in islice(iter(sampler), len(steps))]
    assert drawn == steps
    # the loss groups follow the GPUs: the last batch of an epoch holds fewer images per GPU
    sizes = [len(s) // gpus for s in steps]
    assert [sampler.group_of(k) for k in range(len(steps))] == sizes
    assert sampler.padded_permutation(0).tolist() != sampler.padded_permutation(1).tolist()


def test_depth_last_partial_batch_and_ranks():
    sampler = GlobalBatches(21, 4, seed=0, rank=0, world=1, group=2)  # 2 GPUs x 11 items: 6 steps, the last 2 x 1
    assert sampler.steps_per_epoch == 6 and [sampler.group_of(k) for k in range(7)] == [2, 2, 2, 2, 2, 1, 2]
    one = list(islice(GlobalBatches(21, 4, seed=0, start=4, rank=0, world=1, group=2), 4))
    ranks = [list(islice(GlobalBatches(21, 4, seed=0, start=4, rank=r, world=2, group=2), 4)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == one and [len(b) for b in ranks[0]] == [2, 1, 2, 2]
    with pytest.raises(ValueError, match="the 2 reference GPUs \\(batch 4 / 2\\) do not split over 4 ranks"):
        GlobalBatches(21, 4, seed=0, rank=0, world=4, group=2)
    assert torch.tensor([i for b in islice(iter(sampler), 6) for i, _ in b]).unique().numel() == 21  # padded: 1 twice
