"""Kill a long training mid-way, run it again: it resumes from its checkpoint and ends exactly where an
uninterrupted run ends (linear probe, depth head, CAUSE; STEGO in test_unsup_stego.py, mmseg in
test_seg_resume.py).

The "kill" is an exception raised from inside an iteration by a patched function (nothing in the trainings
knows about it). Comparisons are exact (``torch.equal``): on one CPU thread with ``num_workers=0`` the resumed
run performs the same floating-point operations in the same order, so any difference is a resume bug.
"""

import pytest
import torch
from token_maps import TokenMaps

from benchmarks.core.checkpointing import TrainingCheckpoint, fingerprint


class Killed(RuntimeError):
    pass


def dies_at(function, call: int):
    """``function``, raising :class:`Killed` on its ``call``-th call (1-based)."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise Killed(f"killed at call {call}")
        return function(*args, **kwargs)

    return wrapper


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------ linear probe
class NoisyFeatures(torch.utils.data.Dataset):
    """Separable features plus noise drawn from torch's global RNG at load time (like an augmentation): a resume
    that does not restore the RNG state, or the data position, trains on other inputs."""

    def __init__(self, n, dim, classes, seed):
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (n,), generator=gen)
        self.x = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))[self.labels] * 3

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i] + 0.5 * torch.randn(self.x.shape[1]), int(self.labels[i])


def test_linear_probe_resumes_to_the_uninterrupted_heads(tmp_path, monkeypatch):
    from test_linear import FeatureBackbone

    from benchmarks.classification import linear as LP

    train, val = NoisyFeatures(40, 6, 3, seed=1), NoisyFeatures(20, 6, 3, seed=2)
    configs = LP.head_configs([1, 4], [False, True], [0.01, 0.1])

    def run(folder, die_at=None):
        if die_at is not None:
            monkeypatch.setattr(LP, "backbone_tokens", dies_at(LP.backbone_tokens, die_at))
        ckpt = TrainingCheckpoint(folder, "linear_probe", "fp", every=3, log=lambda m: None)
        try:
            # 40 items / batch 8: 5 batches an epoch, so 11 iterations cross two epoch boundaries
            return LP.train_linear_probe(FeatureBackbone(6), train, val, 3, iterations=11, batch_size=8, seed=4,
                                         configs=configs, checkpoint=ckpt)  # fmt: skip
        finally:
            monkeypatch.undo()

    reference = run(tmp_path / "once")
    with pytest.raises(Killed):
        run(tmp_path / "killed", die_at=8)  # in iteration 8: the last checkpoint is after iteration 6, mid-epoch
    saved = torch.load(tmp_path / "killed" / "linear_probe.pt", weights_only=True)
    assert (saved["step"], saved["epoch"], saved["offset"]) == (6, 1, 1)
    resumed = run(tmp_path / "killed")
    assert resumed["heads"] == reference["heads"] and resumed["metrics"] == reference["metrics"]
    assert resumed["hparams"] == reference["hparams"] and reference["hparams"]["epochs_seen"] == 3  # 11 of 5/epoch
    again = run(tmp_path / "once")  # from the final checkpoint (mid-epoch): nothing to train, the same record
    assert again["hparams"] == reference["hparams"] and again["heads"] == reference["heads"]
    final = [torch.load(tmp_path / d / "linear_probe.pt", weights_only=True) for d in ("once", "killed")]
    assert final[0]["step"] == final[1]["step"] == 11
    assert_same_state(final[0]["heads"], final[1]["heads"])
    assert_same_state(final[0]["optimizer"]["state"][0], final[1]["optimizer"]["state"][0])


# ------------------------------------------------------------------------------------------------ depth
@pytest.fixture(scope="module")
def nyud(tmp_path_factory):
    from benchmarks.data.nyud import NYUDepthV2
    from benchmarks.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("nyud")
    write_synthetic("nyud", root, seed=0, n_train=6, n_val=1)
    return NYUDepthV2(root, "train")


@pytest.fixture(scope="module")
def tiny():
    from sinder.models.weights import load_backbone

    return load_backbone("dinov2_tiny_random")


def test_depth_head_resumes_to_the_uninterrupted_head(nyud, tiny, tmp_path, monkeypatch):
    from benchmarks.depth import train as DT

    cfg = DT.DepthConfig(head="linear4", iterations=7, warmup=2, batch_size=2, lr=1e-2, crop=(42, 56))

    def run(folder, die_at=None):
        if die_at is not None:
            monkeypatch.setattr(DT, "backbone_features", dies_at(DT.backbone_features, die_at))
        ckpt = TrainingCheckpoint(folder, "depth_head", "fp", every=2, log=lambda m: None)
        try:
            return DT.train_head(tiny, nyud, cfg, device=torch.device("cpu"), seed=3, checkpoint=ckpt)
        finally:
            monkeypatch.undo()

    reference = run(tmp_path / "once")
    with pytest.raises(Killed):
        run(tmp_path / "killed", die_at=6)  # in iteration 6, after the checkpoint of iteration 4
    assert torch.load(tmp_path / "killed" / "depth_head.pt", weights_only=True)["step"] == 4
    resumed = run(tmp_path / "killed")
    assert_same_state(reference.state_dict(), resumed.state_dict())
    # the check can fail: a resume that restarts the data stream (all else restored) ends with another head
    with pytest.raises(Killed):
        run(tmp_path / "restarted", die_at=6)
    batches = DT.GlobalBatches
    monkeypatch.setattr(DT, "GlobalBatches", lambda n, batch, seed, start, **kw: batches(n, batch, seed, 0, **kw))
    restarted = run(tmp_path / "restarted")
    ref = reference.state_dict()
    assert any(not torch.equal(v, ref[k]) for k, v in restarted.state_dict().items())


# ------------------------------------------------------------------------------------------------ CAUSE
CAUSE_CFG = {"reduced_dim": 6, "hidden_dim": 16, "heads": 1, "dropout": 0.1, "projection_dim": 8, "grid_cell": 1,
             "temperature": 0.07, "pos_threshold": 0.3, "neg_threshold": 0.1, "bank_size": 6, "bank_keep": 0.5,
             "ema_momentum": 0.9, "checkpoint_every": 3,
             "stage2": {"epochs": 3, "batch_size": 4, "lr": 1e-2, "weight_decay": 0.0, "grad_clip": 1.0}}  # fmt: skip


def test_cause_stage_resumes_to_the_uninterrupted_segment_and_bank(tmp_path):
    """Stage 2 carries a concept bank (a ring of past projections) that the loss reads: it is checkpointed."""
    from benchmarks.core.runner import TaskContext
    from benchmarks.unsupervised import cause as C

    codebook = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))

    def run(folder, die_at=None):
        ctx = TaskContext(profile="smoke", config=CAUSE_CFG, datasets={}, device=torch.device("cpu"),
                          work_dir=folder, progress=False, log=lambda m: None)  # fmt: skip
        source = TokenMaps()
        if die_at is not None:
            source.tokens_of = dies_at(source.tokens_of, die_at)
        torch.manual_seed(0)
        segment = C.CauseSegment(dim=8, n_queries=16, n_classes=3, cfg=CAUSE_CFG)
        C.train_segment(segment, codebook, source, CAUSE_CFG, ctx, 3)
        return segment

    reference = run(tmp_path / "once")  # 4 steps an epoch, 12 steps
    with pytest.raises(Killed):
        run(tmp_path / "killed", die_at=8)  # in step 8, after the checkpoint of step 6
    saved = torch.load(tmp_path / "killed" / "cause_stage2.pt", weights_only=True)
    assert saved["step"] == 6 and saved["modules"]["bank"]["filled"].sum() > 0
    resumed = run(tmp_path / "killed")
    assert_same_state(reference.state_dict(), resumed.state_dict())


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, monkeypatch):
    """The linear probe killed under one learning rate, rerun under another: it trains from scratch (the result
    equals a fresh run of the new config) and the foreign file is replaced."""
    from test_linear import FeatureBackbone

    from benchmarks.classification import linear as LP

    train, val = NoisyFeatures(24, 4, 2, seed=1), NoisyFeatures(10, 4, 2, seed=2)

    def run(folder, lr, die_at=None):
        if die_at is not None:
            monkeypatch.setattr(LP, "backbone_tokens", dies_at(LP.backbone_tokens, die_at))
        config = {"lrs": [lr], "iterations": 6}
        ckpt = TrainingCheckpoint(folder, "linear_probe", fingerprint(config, 0), every=2, log=lambda m: None)
        try:
            return LP.train_linear_probe(FeatureBackbone(4), train, val, 2, iterations=6, batch_size=8, seed=0,
                                         configs=LP.head_configs([1], [False], [lr]), checkpoint=ckpt)  # fmt: skip
        finally:
            monkeypatch.undo()

    with pytest.raises(Killed):
        run(tmp_path / "work", lr=0.5, die_at=5)
    old = torch.load(tmp_path / "work" / "linear_probe.pt", weights_only=True)
    assert old["step"] == 4
    fresh = run(tmp_path / "fresh", lr=0.01)
    rerun = run(tmp_path / "work", lr=0.01)
    assert rerun["heads"] == fresh["heads"]
    new = torch.load(tmp_path / "work" / "linear_probe.pt", weights_only=True)
    assert new["fingerprint"] == fingerprint({"lrs": [0.01], "iterations": 6}, 0) != old["fingerprint"]
    assert_same_state(new["heads"], torch.load(tmp_path / "fresh" / "linear_probe.pt", weights_only=True)["heads"])
