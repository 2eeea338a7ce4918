"""The GPU check (benchmarks/perf/gpu_check.py): its FLOP count, its peak table, and --tiny end to end on a CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.perf import gpu_check
from sinder.models.vit import build_vit


def _math_attention(q, k, v, *args, **kwargs):
    # Plain matmuls, so FlopCounterMode sees attention (it does not count the CPU SDPA kernel).
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


@pytest.mark.parametrize("preset", ["dinov2_tiny_swiglu", "dinov2_tiny_reg"])
def test_flop_count_matches_torch_flop_counter(monkeypatch, preset):
    torch.manual_seed(0)
    model = build_vit(preset, seed=0).eval()
    monkeypatch.setattr(F, "scaled_dot_product_attention", _math_attention)
    x = torch.randn(2, 3, 70, 70)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.get_intermediate_layers(x, n=1, return_class_token=True)
    ours = gpu_check.vit_forward_flops(model, 70, batch=2)
    assert ours["total"] == counter.get_total_flops()
    assert ours["total"] == ours["patch_embed"] + ours["linear"] + ours["attention"]


def test_peak_table_by_device_name():
    assert gpu_check.peak_for_name("NVIDIA H100 80GB HBM3")[0] == 989.5
    assert gpu_check.peak_for_name("NVIDIA H100 PCIe")[0] == 756.5
    assert gpu_check.peak_for_name("NVIDIA H200 NVL")[0] == 835.0
    peak, why = gpu_check.peak_for_name("Tesla V100-SXM2-32GB")
    assert peak is None and "V100" in why and "BF16_PEAK_TFLOPS" in why


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_tiny_check_writes_every_measurement(tmp_path):
    torch.set_num_threads(1)
    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert result["scale"] == "tiny"
    expected = {"feature_extraction_224", "feature_extraction_518", "repair", "knn_imagenet",
                "segmentation_linear_iteration", "jpeg_decode"}  # fmt: skip
    m = result["measurements"]
    assert set(m) == expected
    errors = {name: v.get("error") for name, v in m.items() if v["verdict"] == "error"}
    assert not errors
    for name, v in m.items():
        assert v["verdict"] in ("pass", "miss", "unknown"), name
        assert {"text", "value", "source"} <= set(v["goal"]), name
        assert result["verdicts"][name] == v["verdict"]
    for res in (224, 518):
        ext = m[f"feature_extraction_{res}"]
        assert ext["resolution"] == res and _finite_positive(ext["images_per_s"])
        # no bf16 peak for a CPU: the fraction is null with the reason, and the verdict unknown
        assert ext["bf16_peak_tflops"] is None and ext["fraction_of_bf16_peak"] is None
        assert "cpu" in ext["bf16_peak_source"] and ext["verdict"] == "unknown"
        assert ext["achieved_tflops"] == pytest.approx(ext["images_per_s"] * ext["flops_per_image"]["total"] / 1e12)
    # 518 px has (37/16)^2 more patches than 224 px and attention grows with the square of the tokens
    assert m["feature_extraction_518"]["flops_per_image"]["total"] > 5 * m["feature_extraction_224"]["flops_per_image"]["total"]
    rep = m["repair"]
    assert rep["directions_error"] is None
    for key in ("svd_setup_s", "directions_setup_s", "iterations_per_s", "seconds_per_iteration", "peak_memory_gib", "last_loss"):
        assert _finite_positive(rep[key]), key
    assert rep["iterations_per_s"] == pytest.approx(1 / rep["seconds_per_iteration"])
    assert rep["verdict"] == ("pass" if rep["seconds_per_iteration"] <= 0.12 else "miss")
    knn = m["knn_imagenet"]
    assert _finite_positive(knn["seconds"]) and knn["verdict"] == ("pass" if knn["seconds"] < 30 else "miss")
    assert 0 <= knn["top1_random_features"] <= 100
    seg = m["segmentation_linear_iteration"]
    assert seg["iterations"] == 4 and seg["batch"] == 2 and _finite_positive(seg["seconds_per_iteration"])
    jpeg = m["jpeg_decode"]
    assert _finite_positive(jpeg["eval_images_per_s_per_worker"])
    needed = math.ceil(m["feature_extraction_224"]["images_per_s"] / jpeg["eval_images_per_s_per_worker"])
    assert jpeg["workers_needed_for_extraction_224"] == needed


def test_a_check_cut_off_midway_keeps_what_it_measured(tmp_path, monkeypatch):
    # a device session's time limit kills the run: each finished measurement is already on disk
    torch.set_num_threads(1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # not an Exception: it is not recorded as that measurement's error

    monkeypatch.setattr(gpu_check, "measure_repair", killed)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--only", "feature_extraction_224",
                        "--only", "repair"])  # fmt: skip
    result = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert result["complete"] is False and set(result["measurements"]) == {"feature_extraction_224"}
    assert _finite_positive(result["measurements"]["feature_extraction_224"]["images_per_s"])
    monkeypatch.undo()
    assert gpu_check.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--only", "repair"]) == 0
    result = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert result["complete"] is True and set(result["verdicts"]) == {"repair"}
