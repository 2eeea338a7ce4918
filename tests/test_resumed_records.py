"""Issue 23, 'Records': a resumed task's record is the uninterrupted one's (losses over every step, wall time
over every segment), and a repair's role does not depend on how often it saved.

The kill is an exception raised inside a step (as in test_resume.py); comparisons of the loss means are exact:
one process sums the same floats in the same order, so any difference is a resume bug."""

import json

import pytest
import torch
from token_maps import TokenMaps

from benchmarks.core.runner import TaskContext
from sinder.models.roles import Role


class Killed(RuntimeError):
    pass


def _dies_at(function, call):
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            raise Killed(f"killed at call {call}")
        return function(*args, **kwargs)

    return wrapper


def _ctx(config, folder):
    return TaskContext(profile="smoke", config=config, datasets={}, device=torch.device("cpu"), work_dir=folder,
                       progress=False, log=lambda m: None)  # fmt: skip


CAUSE_STAGE1 = {"grid_cell": 1, "modularity_temperature": 0.1, "checkpoint_every": 3,
                "stage1": {"epochs": 3, "batch_size": 4, "lr": 1e-2}}  # fmt: skip


def test_cause_stage1_modularity_covers_every_step_after_a_resume(tmp_path):
    from benchmarks.unsupervised import cause as C

    def run(folder, die_at=None):
        source = TokenMaps()
        if die_at is not None:
            source.tokens_of = _dies_at(source.tokens_of, die_at)
        codebook = torch.nn.Parameter(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)))
        return C.train_codebook(codebook, source, CAUSE_STAGE1, _ctx(CAUSE_STAGE1, folder))

    reference = run(tmp_path / "once")  # 4 steps an epoch, 12 steps, checkpoints at 3, 6, 9, 12
    with pytest.raises(Killed):
        run(tmp_path / "killed", die_at=8)  # in step 8, after the checkpoint of step 6
    resumed = run(tmp_path / "killed")
    assert resumed == reference and set(reference) == {"stage1_modularity"}
    saved = torch.load(tmp_path / "killed" / "cause_stage1.pt", weights_only=True)
    assert saved["loss_sums_since"] == 0 and saved["step"] == 12


def test_stego_train_loss_covers_every_step_after_a_resume(tmp_path):
    from benchmarks.core.registry import get_task
    from benchmarks.unsupervised import stego as S

    cfg = {**get_task("stego_cityscapes").config("smoke"), "steps": 10, "checkpoint_every": 4, "batch_size": 4,
           "selection": "last"}  # fmt: skip
    cfg["loss"] = cfg["loss_weights"]["dinov2"]
    nns = torch.stack([torch.roll(torch.arange(16), -i) for i in range(8)], dim=1)  # item i's neighbours i..i+7

    def run(folder, die_at=None):
        source = TokenMaps()
        source.channels = 8
        if die_at is not None:
            source.tokens_of = _dies_at(source.tokens_of, die_at)
        torch.manual_seed(0)
        model = S.StegoModel(8, 3)
        return S.train_stego(model, source, nns, cfg, _ctx(cfg, folder), 3)

    reference = run(tmp_path / "once")
    with pytest.raises(Killed):
        run(tmp_path / "killed", die_at=2 * 6 + 1)  # in step 6, after the checkpoint of step 4
    resumed = run(tmp_path / "killed")
    assert resumed == reference and "train_loss" in reference


def _repaired_file(path, **config):
    from dataclasses import asdict

    from safetensors.torch import save_file

    from sinder.repair.config import RepairConfig

    metadata = {"sinder_config": json.dumps(asdict(RepairConfig(**config))), "base_sha256": "b" * 64}
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)  # as sinder.repair.job writes a repair
    return path


def test_the_repair_role_does_not_depend_on_the_checkpoint_interval(tmp_path):
    from sinder.models.weights import weights_role

    every_100 = Role.from_dict(weights_role(_repaired_file(tmp_path / "a.safetensors", checkpoint_every=100), None))
    every_500 = Role.from_dict(weights_role(_repaired_file(tmp_path / "b.safetensors", checkpoint_every=500), None))
    other = Role.from_dict(weights_role(_repaired_file(tmp_path / "c.safetensors", max_iters=301), None))
    assert every_100.kind == "repair" and every_100.remedy == "sinder"
    assert every_100 == every_500 and every_100.key == every_500.key  # one role: the same work
    assert other != every_100  # a parameter that changes the result still separates them
    assert every_100.config["checkpoint_every"] == 100  # the record keeps the full config


def test_the_segment_clock_counts_killed_segments_up_to_their_last_checkpoint(tmp_path):
    import os

    from benchmarks.core.checkpointing import SegmentClock

    work = tmp_path / "work"
    assert SegmentClock(work).start(now=1000.0) == 0.0  # a first segment: nothing before it
    (work / "state.pt").write_bytes(b"x")
    os.utime(work / "state.pt", (1100.0, 1100.0))  # its last checkpoint, 100 s in; then killed at ~1150
    assert SegmentClock(work).start(now=1200.0) == pytest.approx(100.0)  # the resume
    (work / "logs.txt").write_bytes(b"x")  # not a checkpoint: no time
    os.utime(work / "state.pt", (1260.0, 1260.0))
    clock = SegmentClock(work)
    assert clock.start(now=1300.0) == pytest.approx(100.0 + 60.0)
    clock.finish()
    assert not (work / "segments.json").exists()
    assert SegmentClock(work).start(now=1400.0) == 0.0  # after a finished task a new count begins
    assert SegmentClock(None).start() == 0.0


def test_a_resumed_task_records_the_wall_time_of_every_segment(tmp_path, monkeypatch):
    import os

    from benchmarks.classification.task import ImageNetKNN, ImageNetLinear
    from benchmarks.cli import main
    from benchmarks.core.results import load_records

    def fake(task, backbone, ctx):
        return {"metrics": {"top1": 50.0, "top5": 90.0}}

    def killed_after_a_checkpoint(task, backbone, ctx):
        segments = ctx.work_dir / "segments.json"
        started = json.loads(segments.read_text())[-1]["started"] - 100.0  # as if it began 100 s ago
        segments.write_text(json.dumps([{"started": started, "ended": None}]))
        (ctx.work_dir / "linear_probe.pt").write_bytes(b"x")
        os.utime(ctx.work_dir / "linear_probe.pt", (started + 50.0, started + 50.0))  # 50 s of saved training
        raise KeyboardInterrupt  # a kill, not an Exception: no failure record

    def run(*extra):
        return main(["run", "--suite", "table3", "--profile", "smoke", "--backbone", "dinov2_tiny_random", "--out",
                     str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", *extra])  # fmt: skip

    monkeypatch.setattr(ImageNetKNN, "run", fake)
    monkeypatch.setattr(ImageNetLinear, "run", killed_after_a_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(ImageNetLinear, "run", fake)
    assert run("--resume") == 0
    records = {r["task"]: r for r in load_records(tmp_path / "runs")}
    assert 50.0 <= records["imagenet_linear"]["wall_time_s"] < 50.0 + 60  # the killed segment's 50 s, plus this one
    assert records["imagenet_knn"]["wall_time_s"] < 50.0
    assert not list((tmp_path / "cache").rglob("segments.json"))  # finished tasks leave no segments behind
