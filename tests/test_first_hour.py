"""What a new user meets in the first hour (issue 25): the README's install and quick start, the help texts,
`ls`, the repair's summary and one preset scale for every verb."""

import argparse
import json
import re
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.core.registry import get_suite
from benchmarks.core.remedy import list_remedies
from sinder.cli import analyze as analyze_cli
from sinder.cli.repair import summary_text
from sinder.utils.images import list_images

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    ends = [i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i >= 0]
    return text[start:min(ends)] if ends else text[start:]


def test_readme_installs_the_cpu_wheel_from_pytorchs_index_and_says_the_gpu_line_apart():
    text = README.read_text()
    quick = _section(text, "## Quick start")
    # PyTorch's CPU-only wheels live on their own index (https://pytorch.org/get-started/locally/)
    cpu = [line for line in quick.splitlines() if "pip install torch" in line and "whl/cpu" in line]
    assert cpu and all("--index-url https://download.pytorch.org/whl/cpu" in line for line in cpu)
    gpu = [line for line in quick.splitlines() if "pip install torch" in line and "whl/cpu" not in line]
    assert gpu, "a GPU line of its own"
    assert re.search(r"pip install -e '\.\[dev\]'", quick)
    assert "sinder-bench run --suite all --profile smoke" in quick
    assert len(quick.splitlines()) <= 45, "the quick start fits on one screen"
    assert not re.search(r"[.:)`]- \S", text), "a bullet glued to the line before it"
    assert 'pytest -q -m "not slow"' in text or "pytest -m \"not slow\"" in text


def test_run_help_lists_remedies_comma_separated_suites_and_the_profile_default(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "+REMEDY[:ARGS]" in text
    assert all(name in text for name in list_remedies())
    flat = " ".join(text.split())
    assert "comma-separated, e.g. table3,table4" in flat
    assert "paper (the default)" in flat


def test_comma_separated_suites_run_their_tasks_in_order_once():
    three, four = get_suite("table3").tasks, get_suite("table4").tasks
    both = get_suite("table3, table4,table3")
    assert both.tasks == three + four and both.name == "table3,table4,table3"
    assert get_suite("imagenet_knn,table3").tasks == three  # the task is table3's first column
    with pytest.raises(KeyError, match="unknown suite 'nope'"):
        get_suite("table3,nope")


def test_repair_help_says_how_to_get_images_for_the_tiny_model_and_the_recipe_works(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["repair", "--help"])
    text = capsys.readouterr().out
    assert "sinder-bench data synth --dataset imagenet --out data/imagenet" in text
    assert "--images data/imagenet/train" in text
    assert main(["data", "synth", "--dataset", "imagenet", "--out", str(tmp_path / "imagenet")]) == 0
    assert len(list_images(tmp_path / "imagenet" / "train")) == 120  # 12 per class, 10 classes (the twin's defaults)


def test_ls_gives_the_architecture_of_the_tiny_presets(capsys):
    assert main(["ls", "backbones"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    # README "The defective tiny model": width 96, 8 blocks, SwiGLU; the random tiny ones: DINOv2-style, 6 blocks
    assert "96-d x 8 blocks, swiglufused, patch 14;" in lines["dinov2_tiny_defective"]
    assert "96-d x 6 blocks, mlp, patch 14, 4 registers;" in lines["dinov2_tiny_reg_random"]
    assert "1536-d x 40 blocks, swiglufused, patch 14;" in lines["dinov2_vitg14"]


def test_the_repair_names_before_and_after_and_where_the_figure_is():
    report = {"output": "t.safetensors", "iterations": 79, "iterations_with_loss": 31, "stop_reason": "clear",
              "high_norm_last_block": [4, 1], "high_norm_removed_fraction_last_block": 0.75,
              "eq5_defects_removed_fraction": 0.26, "images_made_worse": 0, "wall_time_s": 0.7,
              "figure_sv_changes": "t.sv_changes.png"}  # fmt: skip
    text = summary_text(report, Path("t.report.json"))
    summary = json.loads(text[: text.rindex("}") + 1])
    assert summary["high_norm_last_block"] == {"before": 4, "after": 1}
    assert "4 before the repair, 1 after (75% removed)" in text
    assert "figure:  t.sv_changes.png" in text and "report:  t.report.json" in text


@pytest.mark.parametrize(("backbone", "given", "expected"), [
    ("dinov2_tiny_defective", None, 112),  # repair's preset scale (sinder.repair.config.PRESET_REPAIR_DEFAULTS)
    ("dinov2_tiny_defective:w.safetensors", None, 112),  # its architecture with other weights: the same scale
    ("dinov2_tiny_random", None, 518),  # no preset scale: the official one
    ("dinov2_tiny_defective", 224, 224),  # a given --resolution stands
])  # fmt: skip
def test_analyze_uses_the_presets_scale_as_repair_does(backbone, given, expected, monkeypatch):
    monkeypatch.setattr("sinder.models.weights.load_backbone", lambda name, weights=None: (name, weights))
    args = argparse.Namespace(backbone=backbone, weights=None, resolution=given, compare=None)
    model, _ = analyze_cli._setup(args, images=False)
    assert args.resolution == expected and model[0] == backbone.split(":")[0]
