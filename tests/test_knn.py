import json

import pytest
import torch
from conftest import parity_path

from benchmarks.classification.knn import (
    evaluate_knn,
    knn_classify,
    knn_neighbors,
    topk_accuracy,
)


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    tensors = load_file(str(parity_path("knn_gaussian.safetensors")))
    settings = json.loads(parity_path("knn_gaussian.json").read_text())
    return tensors, settings


def _scores(tensors, settings, **kwargs):
    return knn_classify(
        tensors["train_features"], tensors["train_labels"], tensors["test_features"], settings["nb_knn"],
        settings["T"], settings["num_classes"], **kwargs,
    )  # fmt: skip


def test_reference_weights_are_a_softmax_over_max_k(fixture):
    # Why softmax and not exp: the reference's k=200 scores sum to one for every test row.
    tensors, _ = fixture
    assert torch.allclose(tensors["probs_k200"].sum(1), torch.ones(600), atol=1e-5)
    assert (tensors["probs_k10"].sum(1) < 0.999).all()


def test_parity_with_reference_knn(fixture):
    backend = "torch"
    tensors, settings = fixture
    # Small chunks force the chunked top-k merge over train blocks.
    scores = _scores(tensors, settings, backend=backend, chunk_size=97)
    for k in settings["nb_knn"]:
        ref = tensors[f"probs_k{k}"]
        assert (scores[k] - ref).abs().max().item() <= 1e-5, k
        acc = topk_accuracy(scores[k], tensors["test_labels"], (1, 5))
        assert acc[1] == settings["accuracy"][f"k{k}_top1"]
        assert acc[5] == settings["accuracy"][f"k{k}_top5"]


def test_train_chunk_merge_matches_one_block(fixture):
    tensors, _ = fixture
    args = (tensors["train_features"], tensors["train_labels"], tensors["test_features"][:50], 30)
    whole = knn_neighbors(*args, chunk_size=50, train_chunk=10_000)
    pieces = knn_neighbors(*args, chunk_size=7, train_chunk=333)
    assert torch.equal(whole[2], pieces[2])
    assert torch.allclose(whole[0], pieces[0])
    # Indices really are the top-30 by cosine: compare with a full sort.
    sims = tensors["test_features"][:50] @ tensors["train_features"].T
    assert torch.equal(sims.argsort(1, descending=True)[:, :30], whole[2])


def test_evaluate_knn_reports_best_k(fixture):
    tensors, settings = fixture
    out = evaluate_knn(
        tensors["train_features"], tensors["train_labels"], tensors["test_features"], tensors["test_labels"],
        ks=settings["nb_knn"], T=settings["T"], num_classes=settings["num_classes"], backend="torch",
    )  # fmt: skip
    acc = settings["accuracy"]
    best = max(settings["nb_knn"], key=lambda k: acc[f"k{k}_top1"])
    assert out["hparams"]["k"] == best == 200
    assert out["metrics"]["top1"] == acc[f"k{best}_top1"]
    assert out["metrics"]["top5"] == acc[f"k{best}_top5"]
    assert out["metrics"]["k20_top5"] == acc["k20_top5"]


def test_knn_input_errors():
    train, labels, test = torch.randn(5, 4), torch.zeros(5, dtype=torch.long), torch.randn(2, 4)
    with pytest.raises(ValueError, match="only 5"):
        knn_classify(train, labels, test, [10], 0.07, 2)
    with pytest.raises(ValueError, match="same width"):
        knn_classify(train, labels, torch.randn(2, 3), [1], 0.07, 2)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(train, labels + 3, test, [1], 0.07, 2)
    with pytest.raises(ValueError, match="unknown KNN backend"):
        knn_classify(train, labels, test, [1], 0.07, 2, backend="annoy")


def test_knn_perf_writes_ratios(tmp_path):
    from benchmarks.perf.knn_perf import main

    assert main(["--train", "600", "--test", "40", "--dim", "16", "--classes", "5", "--repeats", "1",
                 "--extract-resolution", "28", "--extract-batch", "4", "--extract-batches", "1",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    data = json.loads((tmp_path / "knn.json").read_text())
    knn = data["knn"]
    assert set(knn["seconds"]) >= {"ours_torch", "reference_algorithm", "naive_full_matrix"}
    assert knn["time_ratio_to_ours_torch"]["ours_torch"] == 1.0
    # Every implementation computes the same scores as the reference algorithm.
    assert max(knn["max_abs_score_diff_vs_reference"].values()) < 1e-5
    assert data["feature_extraction"]["forward_images_per_s"] > 0
