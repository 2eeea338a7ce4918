"""`sinder-bench run --suite table4 --profile smoke` end to end: four records, linear heads clearly above chance.

"Chance" is the best constant predictor, computed from the synthetic val labels with our own loaders: predicting
one class c everywhere gives IoU(c) = (pixels of c) / (all labelled pixels) and 0 for the other classes present,
so its mIoU is max_c share(c) / (number of classes present); its pixel accuracy is the majority share. A head
that only learned the class prior cannot beat these. We require mIoU >= 3x that mIoU and aAcc above the
majority share: the tiny random-feature backbone gets about 18-27 mIoU where chance is about 1 (ADE20k twin)
and 4 (VOC twin), so the margin holds with room, while a broken pipeline (labels misaligned, head not trained)
lands at or below chance.
"""


import numpy as np
import pytest

pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")

from conftest import run_smoke_suite  # noqa: E402

from benchmarks.data.ade20k import ADE20k  # noqa: E402
from benchmarks.data.voc2012 import VOC2012  # noqa: E402

# The whole module shares one smoke suite run (about 20 s of setup).
pytestmark = pytest.mark.slow

TASKS = ("seg_ade20k_linear", "seg_ade20k_multiscale", "seg_voc_linear", "seg_voc_multiscale")
LOADERS = {"ade20k": (ADE20k, 150), "voc2012": (VOC2012, 21)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, cache = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("cache")
    code, records = run_smoke_suite("table4", out, cache, TASKS)
    return {"code": code, "records": records, "cache": cache}


def chance(dataset: str, root, first_n: int | None = None) -> tuple[float, float]:
    """(mIoU %, pixel accuracy %) of the best constant prediction on the val split."""
    loader, n_classes = LOADERS[dataset]
    val = loader(root, "val")
    n = len(val) if not first_n else min(first_n, len(val))
    labels = np.concatenate([val.load(i)["label"].ravel() for i in range(n)])
    labels = labels[(labels >= 0) & (labels < n_classes)]
    share = np.bincount(labels, minlength=n_classes) / labels.size
    return 100 * share.max() / np.count_nonzero(share), 100 * share.max()


def test_suite_writes_one_record_per_task(run):
    assert run["code"] == 0
    for task in TASKS:
        record = run["records"][task]
        assert record is not None, f"no record for {task}"
        assert record["task"] == task and record["table"] == "table4" and record["profile"] == "smoke"
        assert {"miou", "aacc"} <= set(record["metrics"])
        if task.endswith("multiscale"):
            assert record["hparams"]["feature_cache"].startswith("none")
            assert record["hparams"]["train_augmentation"].startswith("full")


@pytest.mark.parametrize("task,dataset", [("seg_ade20k_linear", "ade20k"), ("seg_voc_linear", "voc2012")])
def test_smoke_linear_records_its_feature_cache(run, task, dataset):
    """Every training image's maps computed once (each is drawn within the first pass), every later draw a hit."""
    hparams = run["records"][task]["hparams"]
    assert hparams["feature_cache"].startswith("in memory") and hparams["train_augmentation"].startswith("reduced")
    assert run["records"][task]["backbone"]["weights_sha256"] in hparams["feature_cache"]
    loader, _ = LOADERS[dataset]
    n_train = len(loader(run["records"][task]["datasets"][dataset], "train"))
    stats = hparams["feature_cache_stats"]
    assert stats["entries"] == n_train
    assert stats["hits"] + stats["misses"] == hparams["iterations"] * hparams["batch_per_rank"]
    assert stats["entries"] <= stats["misses"] < stats["hits"]


@pytest.mark.parametrize("task,dataset", [("seg_ade20k_linear", "ade20k"), ("seg_voc_linear", "voc2012")])
def test_linear_head_is_clearly_above_chance(run, task, dataset):
    record = run["records"][task]
    chance_miou, chance_acc = chance(dataset, record["datasets"][dataset])
    assert record["metrics"]["miou"] >= 3 * chance_miou, (record["metrics"], chance_miou)
    assert record["metrics"]["aacc"] > chance_acc, (record["metrics"], chance_acc)
    assert record["hparams"]["in_index"] == [3] and record["hparams"]["crop"] == [84, 84]


@pytest.mark.parametrize("task,dataset", [("seg_ade20k_multiscale", "ade20k"), ("seg_voc_multiscale", "voc2012")])
def test_multiscale_reports_tta_and_single_scale(run, task, dataset):
    record = run["records"][task]
    metrics, hparams = record["metrics"], record["hparams"]
    assert hparams["tta_ratios"] == [1.0, 1.32, 1.73, 2.28, 3.0] and hparams["tta_flip"] is True
    assert hparams["in_index"] == [0, 1, 2, 3]
    assert metrics["miou"] != metrics["miou_single_scale"]
    chance_miou, _ = chance(dataset, record["datasets"][dataset], hparams["eval_images"])
    assert metrics["miou"] >= 3 * chance_miou, (metrics, chance_miou)
    assert record["metric_directions"]["miou_single_scale"] == "higher"
