"""`sinder-bench run --suite table5 --head-weights DIR`: DINOv2's released heads evaluated without training.

The tests write heads in the release's format (mmcv checkpoint, ``state_dict`` with ``decode_head.*`` keys,
official file names) whose output is a known constant: the linear heads have all-equal logits, so their depth is
the mean bin value (min + max) / 2; the DPT head's last conv is zero with bias c, so its depth is c. The RMSE is
then recomputed here in numpy from the synthetic NYU test files."""

import json
import math

import numpy as np
import pytest
import torch

from benchmarks.cli import main
from benchmarks.core import backbones as B
from benchmarks.data.nyud import NYUDepthV2
from benchmarks.depth.heads import build_head
from benchmarks.depth.released import released_head_file
from sinder.models.weights import file_sha256

ARCH = "dinov2_tiny_defective"
DPT_DEPTH = 2.5
CONSTANT = {"linear1": (1e-3 + 10.0) / 2, "linear4": (1e-3 + 10.0) / 2, "dpt": DPT_DEPTH}


def write_heads(folder, kinds=("linear1", "linear4", "dpt")):
    embed = int(B.load(B.parse_backbone_spec(ARCH), device=torch.device("cpu")).embed_dim)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        head = build_head(kind, embed, min_depth=1e-3, max_depth=10.0, channels=32)
        last = head.conv_depth if kind != "dpt" else head.conv_depth.head[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(0.3 if kind != "dpt" else DPT_DEPTH - 1e-3)
        state = {f"decode_head.{k}": v for k, v in head.state_dict().items()}
        torch.save({"meta": {"note": "written by the tests"}, "state_dict": state}, folder / released_head_file(ARCH, kind))


def constant_rmse(root, value):
    test = NYUDepthV2(root, "test")
    rmses = []
    for i in range(len(test)):
        gt = test.load(i)["depth"].astype(np.float64)
        h, w = gt.shape
        crop = np.zeros_like(gt, bool)
        crop[round(45 * h / 480) : round(471 * h / 480), round(41 * w / 640) : round(601 * w / 640)] = True
        valid = crop & (gt > 1e-3) & (gt < 10)
        if valid.any():
            rmses.append(math.sqrt(((gt[valid] - value) ** 2).mean()))
    return float(np.mean(rmses))


def test_released_heads_are_evaluated_and_recorded(tmp_path):
    heads = tmp_path / "heads"
    write_heads(heads)
    assert sorted(p.name for p in heads.iterdir()) == [
        "dinov2_tiny_defective_nyu_dpt_head.pth", "dinov2_tiny_defective_nyu_linear4_head.pth",
        "dinov2_tiny_defective_nyu_linear_head.pth"]  # fmt: skip
    code = main(["run", "--suite", "table5", "--profile", "smoke", "--backbone", ARCH, "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--head-weights", str(heads)])  # fmt: skip
    assert code == 0
    root = tmp_path / "cache" / "synth" / "nyud-seed0"
    for task, kind in (("depth_nyu_linear1", "linear1"), ("depth_nyu_linear4", "linear4"), ("depth_nyu_dpt", "dpt")):
        (path,) = (tmp_path / "runs" / task).glob("*.json")
        record = json.loads(path.read_text())
        head_file = heads / released_head_file(ARCH, kind)
        assert record["hparams"]["head"] == {"source": "released head", "file": head_file.name,
                                             "sha256": file_sha256(head_file)}  # fmt: skip
        assert record["metrics"]["rmse"] == pytest.approx(constant_rmse(root, CONSTANT[kind]), rel=1e-5)


def test_a_missing_released_head_is_named_in_the_preflight(tmp_path, capsys):
    heads = tmp_path / "heads"
    write_heads(heads, kinds=("linear1",))
    code = main(["run", "--suite", "table5", "--profile", "smoke", "--backbone", ARCH, "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--head-weights", str(heads)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "2 missing or invalid input(s)" in err
    assert "dinov2_tiny_defective_nyu_linear4_head.pth is missing" in err
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_tiny_defective/dinov2_tiny_defective_nyu_dpt_head.pth" in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_head_that_does_not_fit_is_a_clear_error(tmp_path):
    from benchmarks.depth.released import load_released_head

    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {"decode_head.conv_depth.weight": torch.zeros(256, 8, 1, 1)}}, path)
    head = build_head("linear1", 16, min_depth=1e-3, max_depth=10.0)
    with pytest.raises(ValueError, match="does not fit"):
        load_released_head(path, head)
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="no 'decode_head"):
        load_released_head(path, head)


def test_a_released_head_run_is_other_work_than_a_trained_one(tmp_path):
    """The released head's file hash joins the run identity: --resume never takes one for the other."""
    from benchmarks.core.job import Job as _Job
    from benchmarks.core.registry import get_task

    heads = tmp_path / "heads"
    write_heads(heads, kinds=("linear4",))
    task, spec = get_task("depth_nyu_linear4"), B.parse_backbone_spec(ARCH)
    config = task.config("smoke")

    def job(head_dir):
        return _Job("smoke", "table5", "r", {}, tmp_path, torch.device("cpu"), 0, 0, False, None, None, print, head_dir)

    assert job(None)._identity_config(task, spec, config) == config
    released = job(heads)._identity_config(task, spec, config)
    assert released == {**config, "released_head_sha256": file_sha256(heads / released_head_file(ARCH, "linear4"))}
