"""Unsupervised segmentation metrics: parity with STEGO's own numbers and hand-computed constructed cases."""

import json

import numpy as np
import pytest
import torch
from conftest import parity_path

from benchmarks.unsupervised.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    hungarian_mapping,
    scores_from_confusion,
    unsupervised_metrics,
)


def test_parity_with_stego_metrics():
    from safetensors.torch import load_file

    tensors = load_file(str(parity_path("unsup_metrics.safetensors")))
    ref = json.loads(parity_path("unsup_metrics.json").read_text())
    preds, labels, n = tensors["preds"], tensors["labels"], ref["n_classes"]
    assert not bool((labels == 13).any())  # the fixture covers a class absent from the labels
    cluster = unsupervised_metrics(preds, labels, n, hungarian=True)
    linear = unsupervised_metrics(preds, labels, n, hungarian=False)
    assert cluster["mIoU"] == pytest.approx(ref["cluster/mIoU"], abs=1e-4)
    assert cluster["Acc"] == pytest.approx(ref["cluster/Accuracy"], abs=1e-4)
    assert linear["mIoU"] == pytest.approx(ref["linear/mIoU"], abs=1e-4)
    assert linear["Acc"] == pytest.approx(ref["linear/Accuracy"], abs=1e-4)


def test_permuted_perfect_prediction_scores_100():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 5, (3, 9, 11)))
    perm = torch.tensor([3, 0, 4, 1, 2])
    preds = perm[labels]
    out = unsupervised_metrics(preds, labels, 5)
    assert out["mIoU"] == pytest.approx(100.0)
    assert out["Acc"] == pytest.approx(100.0)
    assert out["mAP"] == pytest.approx(100.0)
    assert hungarian_mapping(confusion_matrix(preds, labels, 5)).tolist() == torch.argsort(perm).tolist()
    # without matching the permutation is (mostly) wrong
    assert unsupervised_metrics(preds, labels, 5, hungarian=False)["Acc"] < 50


def test_ignore_labels_and_class_never_predicted_by_hand():
    # labels: class 0 x4, class 1 x3, class 2 x2, ignore (255 and -1) x2; every pixel predicted 0 or 1
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 255, -1])
    preds = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 0, 2, 2])
    out = unsupervised_metrics(preds, labels, 3, hungarian=False)
    # class 0: tp 3, predicted 4 (3 + one class-2 pixel), actual 4 -> IoU 3/5
    # class 1: tp 3, predicted 5, actual 3 -> IoU 3/5; class 2: never predicted, actual 2 -> IoU 0
    assert out["mIoU"] == pytest.approx(100 * (3 / 5 + 3 / 5 + 0) / 3)
    assert out["Acc"] == pytest.approx(100 * 6 / 9)
    # CAUSE's "mAP": precision per class, the never-predicted class skipped (NaN)
    assert out["mAP"] == pytest.approx(100 * (3 / 4 + 3 / 5) / 2)
    assert out["mean_recall"] == pytest.approx(100 * (3 / 4 + 3 / 3 + 0 / 2) / 3)
    recall = unsupervised_metrics(preds, labels, 3, hungarian=False, map_definition="recall")
    assert recall["mAP"] == pytest.approx(out["mean_recall"])


def test_hungarian_uses_one_matching_over_the_whole_set():
    # per image, each image would be matched perfectly (A: cluster 0 -> class 0, B: cluster 0 -> class 1);
    # one matching over the set keeps cluster 0 -> class 0 (4 + 1 pixels vs 3 + 1 swapped)
    images = [(torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 0, 1])),  # (labels, preds)
              (torch.tensor([1, 1, 1, 0]), torch.tensor([0, 0, 0, 1]))]  # fmt: skip
    acc = ConfusionAccumulator(2)
    for labels, preds in images:
        acc.update(preds, labels)
        assert unsupervised_metrics(preds, labels, 2)["Acc"] == pytest.approx(100.0)
    assert acc.matrix.tolist() == [[4, 3], [1, 1]]  # [cluster, class]
    assert hungarian_mapping(acc.matrix).tolist() == [0, 1]
    whole = unsupervised_metrics(torch.cat([p for _, p in images]), torch.cat([lab for lab, _ in images]), 2)
    assert acc.compute() == pytest.approx(whole)
    assert whole["Acc"] == pytest.approx(100 * 5 / 9)


def test_more_clusters_than_classes():
    # 4 clusters, 2 classes: clusters 0 and 2 are class 0, cluster 1 is class 1, cluster 3 a stray class-1 pixel
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    preds = torch.tensor([0, 0, 2, 0, 1, 1, 1, 3])
    out = unsupervised_metrics(preds, labels, 2, n_clusters=4)
    # matching: class 0 <- cluster 0 (3 px), class 1 <- cluster 1 (3 px); clusters 2, 3 unmatched -> errors
    assert out["Acc"] == pytest.approx(100 * 6 / 8)
    assert out["mIoU"] == pytest.approx(100 * (3 / 4 + 3 / 4) / 2)
    mapping = hungarian_mapping(confusion_matrix(preds, labels, 2, 4))
    assert mapping.tolist()[:2] == [0, 1] and sorted(mapping.tolist()[2:]) == [-1, -1]


def test_absent_class_never_predicted_is_skipped_but_predicted_absent_class_counts_zero():
    labels = torch.tensor([0, 0, 1, 1])
    conf = confusion_matrix(torch.tensor([0, 0, 1, 1]), labels, 3)
    assert scores_from_confusion(conf)["mIoU"] == pytest.approx(100.0)  # class 2: 0/0 -> NaN -> skipped
    conf = confusion_matrix(torch.tensor([0, 2, 1, 1]), labels, 3)
    assert scores_from_confusion(conf)["mIoU"] == pytest.approx(100 * (1 / 2 + 1 + 0) / 3)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="n_clusters"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="one shape"):
        confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="map_definition"):
        unsupervised_metrics(torch.tensor([0]), torch.tensor([0]), 2, map_definition="ap")
