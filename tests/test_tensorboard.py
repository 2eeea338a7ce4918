"""``run --tensorboard DIR``: the trainings' loss and lr curves, read back from the event files."""

import math
from types import SimpleNamespace

import pytest
import torch

from benchmarks.core import scalars as S
from benchmarks.core.preprocessing import family_preprocessing

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


needs_tensorboard = pytest.mark.skipif(S.tensorboard_problem() is not None, reason="tensorboard not installed "
                                       "(the [dev] extra): the event files cannot be written or read")


def _ctx(tmp_path, label="tiny", key="0123456789abcdef"):
    return SimpleNamespace(backbone_label=label, run_key=key, tensorboard_dir=tmp_path / "tb")


@needs_tensorboard
def test_the_linear_probe_logs_each_steps_loss_and_lr(tmp_path, monkeypatch):
    from test_linear import FeatureBackbone, SeparableSet

    from benchmarks.classification import linear as LP

    # the training's losses, seen independently of the logging: every head's cross-entropy, summed per step
    losses = []
    cross_entropy = LP.F.cross_entropy
    monkeypatch.setattr(LP.F, "cross_entropy", lambda *a, **k: losses.append(cross_entropy(*a, **k).item())
                        or cross_entropy(*a, **k))  # fmt: skip
    configs = LP.head_configs(n_last_blocks=(1,), avgpool=(False,), lrs=(0.01, 0.1))
    iterations, batch = 6, 16
    with S.scalar_writer(_ctx(tmp_path), "imagenet_linear") as writer:
        LP.train_linear_probe(FeatureBackbone(4), SeparableSet(40, 4, 3, 0), SeparableSet(20, 4, 3, 1), 3,
                              iterations=iterations, batch_size=batch, configs=configs, seed=0, scalars=writer)
    folder = tmp_path / "tb" / "imagenet_linear" / "tiny-0123456789ab"
    logged = read_scalars(folder)
    per_step = [losses[2 * k] + losses[2 * k + 1] for k in range(iterations)]  # 2 heads; then evaluation's
    assert [s for s, _ in logged["train/loss"]] == list(range(iterations))
    assert [v for _, v in logged["train/loss"]] == pytest.approx(per_step, rel=1e-6)
    # the largest head's lr: 0.1 scaled by batch/256, on the cosine to 0 at the last step
    expected = [0.1 * batch / 256 * 0.5 * (1 + math.cos(math.pi * k / iterations)) for k in range(iterations)]
    assert [v for _, v in logged["train/lr"]] == pytest.approx(expected, rel=1e-6)


@needs_tensorboard
def test_the_depth_head_logs_each_steps_loss_and_lr(tmp_path, monkeypatch):
    from benchmarks.data.nyud import NYUDepthV2
    from benchmarks.data.synth import write_synthetic
    from benchmarks.depth import train as DT
    from sinder.models.weights import load_backbone

    write_synthetic("nyud", tmp_path / "nyud", seed=0, n_train=4, n_val=1)
    losses = []
    group_loss = DT.depth_loss  # batch 2 = one loss group a step: the group's loss is the step's
    monkeypatch.setattr(DT, "depth_loss", lambda *a: losses.append(group_loss(*a).item()) or group_loss(*a))
    cfg = DT.DepthConfig(head="linear1", iterations=5, warmup=2, batch_size=2, lr=1e-2, crop=(42, 56))
    with S.scalar_writer(_ctx(tmp_path, label="a/b"), "depth_nyu_linear1") as writer:
        DT.train_head(load_backbone("dinov2_tiny_random"), NYUDepthV2(tmp_path / "nyud", "train"), cfg,
                      device=torch.device("cpu"), seed=1, scalars=writer)  # fmt: skip
    logged = read_scalars(tmp_path / "tb" / "depth_nyu_linear1" / "a_b-0123456789ab")
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert logged["train/loss"] == [(k, pytest.approx(v, rel=1e-6)) for k, v in enumerate(losses)]
    # warmup 1/2, 2/2, then the cosine over the 3 remaining steps
    expected = [1e-2 * f for f in (0.5, 1.0, 1.0, 0.75, 0.25)]
    assert [v for _, v in logged["train/lr"]] == pytest.approx(expected, rel=1e-6)


@needs_tensorboard
def test_mmseg_logs_its_logger_hooks_scalars(tmp_path):
    import json

    pytest.importorskip("mmseg")
    from benchmarks.data.synth import write_synthetic
    from benchmarks.segmentation.config import load_config, resolve_config
    from benchmarks.segmentation.mmseg_env import ensure_mmseg
    from benchmarks.segmentation.task import dataset_base
    from benchmarks.segmentation.train import train_and_evaluate
    from sinder.models.weights import load_backbone

    ensure_mmseg()
    write_synthetic("ade20k", tmp_path / "ade", seed=0, n_train=4, n_val=1)
    backbone = load_backbone("dinov2_tiny_random")
    cfg = resolve_config(load_config("ade20k", "linear"), preprocessing=DINOV2,
                         data_root=dataset_base("ade20k", tmp_path / "ade"),
                         embed_dim=backbone.embed_dim, work_dir=tmp_path / "work", device_type="cpu",
                         overrides={"crop": 28, "iterations": 4, "warmup": 1, "batch_size": 2, "log_level": "ERROR",
                                    "eval_images": 1})  # fmt: skip
    train_and_evaluate(cfg, backbone, tensorboard=tmp_path / "tb")
    logged = read_scalars(tmp_path / "tb")
    # what mmengine's LoggerHook wrote to its own scalars.json is what TensorBoard got
    (json_file,) = (tmp_path / "work").rglob("scalars.json")
    rows = [json.loads(line) for line in json_file.read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 4  # logged every iteration: interval = iterations // 4
    for tag in ("loss", "lr", "decode.loss_ce"):
        assert logged[tag] == [(r["step"], pytest.approx(r[tag], rel=1e-6)) for r in train_rows], tag
    assert [s for s, _ in logged["loss"]] == [1, 2, 3, 4] and all(v > 0 for _, v in logged["loss"])


def test_scalars_are_off_by_default_and_only_rank_zero_writes(tmp_path, monkeypatch):
    ctx = SimpleNamespace(backbone_label="x", run_key="k")
    with S.scalar_writer(ctx, "t") as writer:
        assert writer is None
    ctx.tensorboard_dir = tmp_path / "env"
    assert S.run_log_dir(ctx, "t") == tmp_path / "env" / "t" / "x-k"
    monkeypatch.setattr(S.D, "is_main", lambda: False)
    with S.scalar_writer(ctx, "t") as writer:
        assert writer is None
    assert not (tmp_path / "env").exists()


def test_run_tensorboard_takes_the_folder_or_refuses_without_the_package(tmp_path, monkeypatch, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--tensorboard", action=S.TensorboardAction)
    monkeypatch.setattr(S, "tensorboard_problem", lambda: None)
    args = parser.parse_args(["--tensorboard", str(tmp_path / "tb")])
    assert args.tensorboard == tmp_path / "tb"
    monkeypatch.setattr(S, "tensorboard_problem", lambda: "--tensorboard needs the tensorboard package")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--tensorboard", "x"])
    assert exit_.value.code == 2 and "--tensorboard needs the tensorboard package" in capsys.readouterr().err


@needs_tensorboard
def test_run_tensorboard_writes_one_folder_per_task_and_backbone(tmp_path, monkeypatch):
    import json

    from benchmarks.cli import main

    code = main(["run", "--suite", "depth_nyu_linear1", "--profile", "smoke", "--backbone", "dinov2_tiny_random",
                 "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                 "--tensorboard", str(tmp_path / "tb"), "--cfg-options", "depth_nyu_linear1.iterations=12",
                 "depth_nyu_linear1.warmup=2"])  # fmt: skip
    assert code == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "depth_nyu_linear1").glob("*.json")]
    (folder,) = (tmp_path / "tb" / "depth_nyu_linear1").iterdir()
    assert folder.name.startswith("dinov2_tiny_random-")
    logged = read_scalars(folder)
    assert [s for s, _ in logged["train/loss"]] == list(range(12)) and len(logged["train/lr"]) == 12
    assert "tensorboard" not in json.dumps(record["config"])  # a side channel: not in the config or identity
