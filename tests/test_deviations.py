"""Every run record says the autocast dtype it ran in and lists its deviations from the reference code; the
report prints them under the table whose runs it shows."""

import pytest
import torch

from benchmarks.core import results as R
from benchmarks.core.report import build_report
from benchmarks.core.runner import autocast_dtype, run_deviations


def test_autocast_follows_the_task_config():
    assert autocast_dtype({"autocast": "float16"}) is torch.float16
    assert autocast_dtype({}) is torch.bfloat16 and autocast_dtype({"autocast": "float32"}) is None
    with pytest.raises(ValueError, match="autocast='fp8'"):
        autocast_dtype({"autocast": "fp8"})


def test_run_deviations_add_autocast_when_it_differs_from_the_reference():
    result = {"deviations": ["gradient_loss=spatial"]}
    cpu = run_deviations({"autocast": "float16"}, result, torch.device("cpu"), torch.float16)
    assert cpu["autocast"] == "float32"  # no autocast on CPU
    assert cpu["deviations"][0] == "gradient_loss=spatial" and "reference uses float16" in cpu["deviations"][1]
    gpu = run_deviations({"autocast": "float16"}, result, torch.device("cuda"), torch.float16)
    assert gpu == {"autocast": "float16", "deviations": ["gradient_loss=spatial"]}


def test_task_configs_name_the_reference_precision():
    from benchmarks.core.registry import get_task

    assert get_task("depth_nyu_dpt").config("paper")["autocast"] == "float16"
    assert get_task("cause_cityscapes").config("paper")["autocast"] == "float16"
    smoke = get_task("depth_nyu_dpt").config("smoke")
    assert smoke["head_init"] == "positive_readout" and smoke["gradient_loss"] == "reference"


def test_report_prints_the_deviations_of_the_runs_it_shows(tmp_path):
    store = R.ResultStore(tmp_path / "runs")
    for task, devs in (("depth_nyu_linear4", ["gradient_loss=spatial", "eval_resize=unpad"]),
                       ("depth_nyu_dpt", []), ("imagenet_knn", ["autocast: bf16"])):  # fmt: skip
        store.write(R.make_record(
            task=task, profile="paper", backbone={"label": "dinov2_vitg14", "weights_sha256": "a" * 64},
            metrics={"rmse": 0.3, "top1": 80.0}, metric_directions={"rmse": "lower", "top1": "higher"}, hparams={},
            config={}, seed=0, wall_time_s=1.0, device={"type": "cpu"},
            extra={"autocast": "float16", "deviations": devs},
        ))  # fmt: skip
    text = build_report(tmp_path / "runs", tables="5", plots=False)
    assert "Deviations from the reference code" in text
    assert "- dinov2_vitg14 / depth_nyu_linear4 (paper): eval_resize=unpad; gradient_loss=spatial" in text
    assert "depth_nyu_dpt (paper)" not in text and "autocast: bf16" not in text  # no deviations; another table
    assert "Deviations" not in build_report(tmp_path / "runs", tables="4", plots=False)
