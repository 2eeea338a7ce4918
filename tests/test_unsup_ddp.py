"""STEGO and CAUSE under torchrun: 2 gloo processes record what 1 process records (smoke, shrunk).

Both trainings split each global batch into per-rank shares (rank r takes positions r, r + W, ...), draw every
random number of a step for the whole global batch (dropout masks, sampled points, negatives, positives, grid
positions, the concept bank's keep draw) and keep the rank's rows, gather what a loss compares across the batch
(STEGO's negatives and its batch-wide feature mean, CAUSE's contrastive keys and its concept bank) and weight each
rank's loss so that DDP's gradient average is the gradient of the one-process loss. What remains is float
summation order (per-rank partial sums, the gradient all-reduce): the recorded training losses agree to ~1e-5
(the strong check: a per-rank bank, per-rank negatives or per-rank dropout masks move them by 1e-2 and the metrics
by points). That drift can flip a few of the ~150k evaluation pixels after training, so metrics are compared
to 0.1 point, and CAUSE's mAP (the mean precision of the matched clusters, where a cluster of a few pixels swings
its class's precision by tens of points) to 3 points. Measured: STEGO identical to the printed digits; CAUSE
mIoU/Acc within 0.03, mAP within 0.8.

The global batch is the profile's whatever the number of ranks. CAUSE runs in its paper mode ``ddp: reference``
(the model the official multi-process scripts save: their processes never average gradients, so it is rank 0's
model, at lr x ``ddp_processes`` on a 1/``ddp_processes`` share of the set per epoch; see ``task._cause_ddp``),
here as if the official run had 2 processes: 2 ranks of this run train that one model as 1 process does.
"""

from __future__ import annotations

import pytest
from ddp_helpers import one_and_two_processes

BACKBONE = "dinov2_tiny_random"
METRIC_TOL = 0.1  # percentage points (see the module doc)
MAP_TOL = 3.0
LOSS_REL = 1e-4


def _same_losses(one: dict, two: dict, prefix: str) -> None:
    keys = [k for k in one["hparams"] if k.startswith(prefix)]
    assert keys
    for key in keys:
        assert two["hparams"][key] == pytest.approx(one["hparams"][key], rel=LOSS_REL, abs=1e-4), key


@pytest.mark.slow
def test_stego_two_processes_record_the_metrics_of_one(tmp_path):
    task = "stego_cityscapes"
    options = {f"{task}.steps": 30, f"{task}.val_every": 10, f"{task}.checkpoint_every": 10, f"{task}.selection": "best",
               f"{task}.crf": False}  # the CRF runs (sharded) in the CAUSE test  # fmt: skip
    ones, twos = one_and_two_processes(tmp_path, task, options, backbone=BACKBONE)  # world sizes checked there
    one, two = ones[task], twos[task]
    assert two["metrics"] == pytest.approx(one["metrics"], abs=METRIC_TOL)
    _same_losses(one, two, "train_")
    # the best-checkpoint selection saw the same validation scores and picked the same step
    sel_one, sel_two = one["hparams"]["selection"], two["hparams"]["selection"]
    assert sel_one["mode"] == sel_two["mode"] == "best" and sel_one["step"] == sel_two["step"]
    assert [h[0] for h in sel_one["history"]] == [h[0] for h in sel_two["history"]] == [10, 20, 30]
    assert [h[1] for h in sel_two["history"]] == pytest.approx([h[1] for h in sel_one["history"]], abs=METRIC_TOL)
    assert len({round(h[1], 3) for h in sel_one["history"]}) == 3  # the model changes: the comparison says something
    # the effective (global) batch and lr are the protocol's; the split over ranks is recorded
    for key in ("global_batch", "lr", "probe_lr", "steps"):
        assert two["hparams"][key] == one["hparams"][key], key
    assert (one["hparams"]["world_size"], one["hparams"]["batch_per_rank"]) == (1, 8)
    assert (two["hparams"]["world_size"], two["hparams"]["batch_per_rank"]) == (2, 4)


@pytest.mark.slow
def test_cause_two_processes_record_the_metrics_of_one(tmp_path):
    task = "cause_cityscapes"
    # the paper's mode (ddp: reference, here as 2 official processes): lr x 2, each epoch a random half of the set
    options = {f"{task}.ddp": "reference", f"{task}.ddp_processes": 2, f"{task}.stage1.epochs": 2,
               f"{task}.stage2.epochs": 3, f"{task}.stage3.epochs": 4, f"{task}.stage3.lr_step_epochs": 2}  # fmt: skip
    ones, twos = one_and_two_processes(tmp_path, task, options, backbone=BACKBONE)  # world sizes checked there
    one, two = ones[task], twos[task]
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, abs=MAP_TOL if "map" in name else METRIC_TOL), name
    for stage in ("stage1_modularity", "stage2_contrastive", "stage2_linear", "stage3_linear", "stage3_modularity"):
        _same_losses(one, two, stage)
    assert one["metrics"]["crf_miou"] != one["metrics"]["miou"]  # the CRF ran on both sides
    for stage in ("stage1", "stage2", "stage3"):
        assert two["hparams"][f"{stage}_global_batch"] == one["hparams"][f"{stage}_global_batch"] == 8
        assert two["hparams"][f"{stage}_lr"] == one["hparams"][f"{stage}_lr"] == 2e-3
        assert (one["hparams"][f"{stage}_batch_per_rank"], two["hparams"][f"{stage}_batch_per_rank"]) == (8, 4)
    assert (one["hparams"]["world_size"], two["hparams"]["world_size"]) == (1, 2)
    assert one["hparams"]["ddp"] == two["hparams"]["ddp"] == "reference"
    assert not [d for d in two["deviations"] if "ddp" in d] and two["deviations"] == one["deviations"]


# ------------------------------------------------------------------ the pieces, in one process (no torchrun)
def _as_rank(monkeypatch, rank: int, world: int) -> None:
    from benchmarks.core import distributed as D

    monkeypatch.setattr(D, "rank", lambda: rank)
    monkeypatch.setattr(D, "world_size", lambda: world)


def test_step_noise_cuts_the_one_process_draw_into_rank_rows(monkeypatch):
    import torch

    from benchmarks.unsupervised import loop as L

    def draws(rank, world):
        _as_rank(monkeypatch, rank, world)
        noise = L.StepNoise(seed=3, stage="s", step=7, n_global=6, device="cpu")
        x = torch.arange(6.0)[rank::world, None].expand(-1, 4) + 1
        return (noise.rand(2, 3), noise.randint(5, 4), noise.randperm(), noise.dropout(torch.ones(len(x), 50), 0.5),
                noise.mean(x))  # fmt: skip

    whole = draws(0, 1)
    ranks = [draws(r, 2) for r in range(2)]
    for i in range(4):
        if i == 2:  # the permutation is global: every rank holds all of it
            assert torch.equal(ranks[0][i], whole[i]) and torch.equal(ranks[1][i], whole[i])
            continue
        merged = torch.empty_like(whole[i])
        merged[0::2], merged[1::2] = ranks[0][i], ranks[1][i]
        assert torch.equal(merged, whole[i]), i
    assert set(whole[3].unique().tolist()) == {0.0, 2.0}  # inverted dropout at p 0.5
    # each rank's term is W x its share: the terms average to the global mean (3.5 = mean of 1..6)
    assert whole[4].item() == pytest.approx(3.5)
    assert (ranks[0][4].item() + ranks[1][4].item()) / 2 == pytest.approx(3.5)
    assert ranks[0][4].item() == pytest.approx(2 * (1 + 3 + 5) / 6)


def test_cause_attention_is_multihead_attention_with_its_dropout_outside():
    import torch
    from torch import nn

    from benchmarks.unsupervised.cause import attention

    torch.manual_seed(0)
    for heads in (1, 2):
        mha = nn.MultiheadAttention(8, heads, batch_first=True).eval()
        q, kv = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
        expected = mha(q, kv, kv, need_weights=False)[0]
        assert torch.allclose(attention(mha, q, kv, kv, nn.Identity()), expected, atol=1e-6)
        # the dropout acts on the attention weights: dropping them all leaves the output projection's bias
        zeroed = attention(mha, q, kv, kv, lambda w: w * 0)
        assert torch.allclose(zeroed, mha.out_proj.bias.expand_as(zeroed))
