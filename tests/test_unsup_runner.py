"""Tables 1 and 2 through the runner: smoke profile, synthetic twins, one record per (backbone, task)."""

import json

import pytest
import torch

from benchmarks.core.preprocessing import family_preprocessing
from benchmarks.data import open_dataset
from benchmarks.unsupervised.data import SegmentationView
from benchmarks.unsupervised.metrics import unsupervised_metrics

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std

BACKBONE = "dinov2_tiny_random"



def run_cli(suite, tmp_path, *extra):
    from benchmarks.cli import main

    return main(["run", "--suite", suite, "--profile", "smoke", "--backbone", BACKBONE, "--out",
                 str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                 "--no-progress", *extra])  # fmt: skip


def records(tmp_path, task):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "runs" / task).glob("*.json"))]


def chance_miou(root, dataset, resolution, resize, n_classes):
    view = SegmentationView(open_dataset(dataset, root, "val"), resolution, (), resize, preprocessing=DINOV2)
    labels = torch.stack([torch.from_numpy(view.load(i)[1]) for i in range(len(view))])
    random = torch.randint(0, n_classes, labels.shape, generator=torch.Generator().manual_seed(0))
    return unsupervised_metrics(random, labels, n_classes)["mIoU"]


def test_suites_register_exactly_the_tasks_of_tables_1_and_2():
    from benchmarks.core.registry import get_suite, get_task, import_errors

    assert not any("unsupervised" in module for module in import_errors())
    for suite, table in (("table1", "table1"), ("table2", "table2")):
        for name in get_suite(suite).tasks:
            assert get_task(name).table == table
            assert get_task(name).config("paper") and get_task(name).config("smoke")
    with pytest.raises(ValueError, match="no profile"):
        get_task("stego_cityscapes").config("huge")


def test_paper_profiles_carry_the_protocol():
    from benchmarks.core.registry import get_task

    stego = get_task("stego_cityscapes").config("paper")
    assert (stego["train_resolution"], stego["eval_resolution"], stego["steps"], stego["batch_size"]) == (392, 560,
                                                                                                         5000, 16)
    assert stego["loss_weights"]["sinder"] == {"neg_inter_weight": 0.80, "pos_inter_weight": 0.65,
                                               "pos_intra_weight": 0.90, "neg_inter_shift": 0.30,
                                               "pos_inter_shift": 0.45, "pos_intra_shift": 0.60}  # fmt: skip
    assert get_task("stego_potsdam").config("paper")["loss_weights"]["sinder"]["neg_inter_shift"] == 0.40
    cause = get_task("cause_voc").config("paper")
    assert (cause["resolution"], cause["codebook_size"], cause["n_classes"]) == (322, 2048, 21)
    assert len(cause["train_crops"]) == 5 and cause["stage3"]["weight_decay"] == 1e-4


def test_loss_variant_follows_the_backbone():
    from types import SimpleNamespace

    from benchmarks.unsupervised.task import loss_variant

    repaired = {"kind": "repair", "remedy": "sinder", "base_sha256": "ab" * 32}
    assert loss_variant(SimpleNamespace(num_register_tokens=0, weights_role={"kind": "official"})) == "dinov2"
    assert loss_variant(SimpleNamespace(num_register_tokens=4, weights_role={"kind": "register"})) == "register"
    assert loss_variant(SimpleNamespace(num_register_tokens=0, weights_role=repaired)) == "sinder"
    assert loss_variant(SimpleNamespace(num_register_tokens=0), repaired) == "sinder"  # the run context's role
    # A label or file name that says "sinder" is not a repair.
    lookalike = SimpleNamespace(num_register_tokens=0, weights_role={"kind": "other"}, weights_source="sinder.pth")
    assert loss_variant(lookalike) == "dinov2"
    clamped = {"kind": "repair", "remedy": "clamp", "base_sha256": "ab" * 32}
    assert loss_variant(SimpleNamespace(num_register_tokens=0), clamped) == "dinov2"


@pytest.mark.slow
def test_table1_smoke_run_writes_records(tmp_path):
    assert run_cli("table1", tmp_path) == 0
    for task in ("stego_cityscapes", "stego_potsdam"):
        (record,) = records(tmp_path, task)
        assert record["task"] == task and record["table"] == "table1" and record["profile"] == "smoke"
        assert set(record["metrics"]) >= {"cluster_miou", "cluster_acc", "linear_miou", "linear_acc"}
        assert record["hparams"]["crf_backend"] in ("pydensecrf", "torch-permutohedral")
    potsdam = records(tmp_path, "stego_potsdam")[0]
    root = tmp_path / "cache" / "synth" / "potsdam-seed0"
    chance = chance_miou(root, "potsdam", 112, "short_center", 3)
    print(f"stego potsdam twin: cluster mIoU {potsdam['metrics']['cluster_miou']:.2f}, random {chance:.2f}")
    assert potsdam["metrics"]["cluster_miou"] > 2 * chance
    # a second run with --resume finds both records and trains nothing
    assert run_cli("table1", tmp_path, "--resume") == 0
    assert len(records(tmp_path, "stego_cityscapes")) == 1


@pytest.mark.slow
def test_table2_smoke_run_writes_records(tmp_path):
    assert run_cli("table2", tmp_path) == 0
    for task in ("cause_cityscapes", "cause_voc"):
        (record,) = records(tmp_path, task)
        assert record["table"] == "table2"
        assert set(record["metrics"]) >= {"miou", "map", "acc", "crf_miou", "crf_map", "crf_acc"}
        assert record["metric_directions"]["crf_miou"] == "higher"
