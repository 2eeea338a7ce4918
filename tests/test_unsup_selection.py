"""Tables 1 and 2 as their reference code runs: STEGO evaluates its best validation checkpoint, CAUSE's paper
profile trains the model the official 4-process scripts save (rank 0's: batch 16, lr 4e-3, a quarter of the set
per epoch; their DDP modules are unwrapped, so the processes never average gradients)."""

import copy

import pytest
import torch

from benchmarks.core.registry import get_task
from benchmarks.core.runner import TaskContext
from benchmarks.data import open_dataset
from benchmarks.unsupervised import loop as L
from benchmarks.unsupervised import stego as S
from benchmarks.unsupervised.cause import _schedule, cause_deviations
from benchmarks.unsupervised.data import SegmentationView, parse_crops
from benchmarks.unsupervised.task import _cause_ddp, resolve_config


def test_cause_paper_profile_is_the_official_rank_zero_model():
    cfg = resolve_config("cause", "cityscapes", "paper")
    assert cfg["ddp"] == "reference" and cfg["ddp_processes"] == 4
    for stage in ("stage1", "stage2", "stage3"):
        assert cfg[stage]["batch_size"] == 16 and cfg[stage]["lr"] == pytest.approx(4e-3)
        assert cfg[stage]["batch_size_per_process"] == 16 and cfg[stage]["lr_per_process"] == pytest.approx(1e-3)
    n_items = 2975 * 5  # five-cropped Cityscapes train
    batch, per_epoch, total = _schedule(n_items, cfg["stage3"], cfg)
    assert (batch, per_epoch, total) == (16, n_items // 4 // 16, n_items // 4 // 16 * 5)  # rank 0's sampler share
    # an epoch is a random quarter of the set: distinct items, a new quarter each epoch
    small = 64
    first = torch.cat([L.global_batch(small, 4, s, 0, small // 4) for s in range(4)])
    assert len(first) == len(set(first.tolist())) == 16
    second = torch.cat([L.global_batch(small, 4, s, 0, small // 4) for s in range(4, 8)])  # 4 steps an epoch
    assert len(set(second.tolist())) == 16 and set(second.tolist()) != set(first.tolist())
    # the paper mode departs from the official scripts only by the dropped partial batch, on any number of ranks
    partial = ["each epoch's last partial batch is dropped (official: trained on)"]
    assert cause_deviations(cfg, world_size=4) == cause_deviations(cfg, world_size=1) == partial
    raw = resolve_config("cause", "voc2012", "smoke")  # smoke reads its numbers as one process
    assert raw["ddp"] == "single" and raw["stage1"]["batch_size"] == 8 and raw["stage1"]["lr"] == pytest.approx(1e-3)
    assert _schedule(100, raw["stage1"], raw)[1] == 100 // 8
    single = copy.deepcopy(cfg)
    for stage in ("stage1", "stage2", "stage3"):
        single[stage]["batch_size"], single[stage]["lr"] = 16, 1e-3
    single = _cause_ddp({**single, "ddp": "single"})
    assert single["stage2"]["batch_size"] == 16 and single["stage2"]["lr"] == pytest.approx(1e-3)
    assert cause_deviations(single, 1)[1].startswith("ddp=single")
    with pytest.raises(ValueError, match="ddp='eight'"):
        _cause_ddp({**cfg, "ddp": "eight"})


def test_best_checkpoint_keeps_the_first_maximum():
    model = torch.nn.Linear(2, 1)
    best = S.BestCheckpoint()
    for step, score in ((100, 1.0), (200, 7.0), (300, 7.0), (400, 3.0)):
        with torch.no_grad():
            model.bias.fill_(step)
        best.offer(step, score, model)
    assert best.step == 200 and best.model["bias"].item() == 200.0
    assert best.history == [[100, 1.0], [200, 7.0], [300, 7.0], [400, 3.0]]
    assert S.BestCheckpoint(best.state()).step == 200  # survives a checkpoint round trip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from benchmarks.data.synth import write_synthetic
    from sinder.models.weights import load_backbone

    root = tmp_path_factory.mktemp("synth") / "cityscapes"
    write_synthetic("cityscapes", root, seed=0)
    return root, load_backbone("dinov2_tiny_random")


@pytest.mark.parametrize("selection", ["best", "last"])
def test_stego_evaluates_the_checkpoint_with_the_best_validation_score(setup, tmp_path, monkeypatch, selection):
    from benchmarks.unsupervised.tokens import TokenSource, knn_indices

    root, backbone = setup
    task = get_task("stego_cityscapes")
    cfg = {**task.config("smoke"), "train_resolution": 56, "knn_resolution": 56, "steps": 10, "val_every": 2,
           "selection": selection}  # fmt: skip
    cfg["loss"] = cfg["loss_weights"]["dinov2"]
    ctx = TaskContext(profile="smoke", config=cfg, datasets={"cityscapes": root}, device=torch.device("cpu"),
                      feature_cache=tmp_path / "features", progress=False, weights_sha256=backbone.weights_sha256,
                      backbone_label="tiny", log=lambda m: None)  # fmt: skip
    view = SegmentationView(open_dataset("cityscapes", root, "train"), 56, parse_crops([["five", 0.5]]), name="cs")
    source = TokenSource(backbone, view, ctx)
    scores, seen = iter([10.0, 40.0, 20.0, 40.0, 30.0]), {}  # validations at steps 2, 4, 6, 8, 10

    def scripted(model, val, cfg, n_classes):
        seen[len(seen) * 2 + 2] = copy.deepcopy(model.state_dict())
        return next(scores)

    monkeypatch.setattr(S, "validate_cluster_miou", scripted)
    torch.manual_seed(0)
    model = S.StegoModel(source.channels, 27)
    stats = S.train_stego(model, source, knn_indices(backbone, view, ctx, k=8), cfg, ctx, 27, val=source)
    if selection == "last":
        assert stats["selection"] == {"mode": "last"} and not seen  # no validation when evaluating the last step
        return
    assert stats["selection"]["step"] == 4 and stats["selection"]["val_cluster_miou"] == 40.0  # first of the ties
    assert [h[0] for h in stats["selection"]["history"]] == [2, 4, 6, 8, 10]
    state = model.state_dict()
    assert all(torch.equal(value, seen[4][name]) for name, value in state.items())
    assert not all(torch.equal(value, seen[10][name]) for name, value in state.items())  # not the last step
