"""CAUSE-TR: modularity, concept bank and contrastive loss against direct computations; training on the twins."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from token_maps import TokenMaps

from benchmarks.core.preprocessing import family_preprocessing
from benchmarks.core.runner import TaskContext
from benchmarks.data import open_dataset
from benchmarks.unsupervised import cause as C
from benchmarks.unsupervised.data import SegmentationView
from benchmarks.unsupervised.metrics import unsupervised_metrics

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std


def test_modularity_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    centroids = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = C.modularity_loss(centroids, x, temperature=0.1)
    total = 0.0
    for b in range(2):
        cos = lambda u, v: float(F.cosine_similarity(u, v, dim=0))  # noqa: E731
        a = [[max(0.0, cos(x[b, i], x[b, j])) if i != j else 0.0 for j in range(5)] for i in range(5)]
        deg = [sum(row) for row in a]
        m2 = sum(deg)
        d = [[max(0.0, cos(x[b, i], centroids[k].detach())) for i in range(5)] for k in range(3)]
        q = 0.0
        for i in range(5):
            for j in range(5):
                w = a[i][j] - deg[i] * deg[j] / m2
                delta = max(math.tanh(d[k][i] * d[k][j] / 0.1) for k in range(3))
                q += w * delta
        total += q / m2
    assert float(loss.detach()) == pytest.approx(-total / 2, abs=1e-6)
    loss.backward()
    assert centroids.grad is not None and centroids.grad.abs().sum() > 0


def test_grid_sampling_takes_one_token_per_cell():
    maps = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).reshape(2, 3, 6, 5)
    picked, order = C.grid_sample_tokens(maps, cell=2)
    assert picked.shape == (2, 6, 3)  # 3 x 2 cells of 2 x 2 (the last column is dropped)
    for b in range(2):
        for cell in range(6):
            row, col = divmod(cell, 2)
            dy, dx = divmod(int(order[b, cell]), 2)
            assert torch.equal(picked[b, cell], maps[b, :, 2 * row + dy, 2 * col + dx])
    again, _ = C.grid_sample_tokens(maps * 2, cell=2, order=order)
    assert torch.equal(again, picked * 2)


def test_concept_bank_keeps_half_and_drops_the_oldest():
    bank = C.ConceptBank(n_concepts=3, size=3, dim=8, device="cpu", keep=0.5)
    first = torch.eye(8)[:4]
    bank.update(torch.tensor([0, 0, 0, 0]), first)
    concepts, keys = bank.entries()
    assert concepts.tolist() == [0, 0]  # floor(4 * 0.5) kept
    assert all(any(torch.equal(k, f) for f in first) for k in keys)
    second = torch.eye(8)[4:8]
    bank.update(torch.tensor([0, 0, 0, 0, 1]), torch.cat([second, torch.ones(1, 8)]))
    concepts, keys = bank.entries()
    assert concepts.tolist() == [0, 0, 0]  # capped at 3; concept 1 had a single key: floor(0.5) = 0 kept
    from_second = sum(any(torch.equal(k, f) for f in second) for k in keys)
    assert from_second == 2  # both new keys, plus the newer of the two old ones


def _naive_contrastive(tokens, proj, proj_ema, codebook, bank_concepts, bank_keys, t=0.07, hi=0.3, lo=0.1):
    batch, n = tokens.shape[:2]
    idx = (F.normalize(tokens, dim=-1) @ F.normalize(codebook, dim=1).t()).argmax(-1)
    vq = F.normalize(codebook[idx], dim=-1).reshape(batch * n, -1)
    student = F.normalize(proj, dim=-1).reshape(batch * n, -1)
    teacher = F.normalize(proj_ema, dim=-1).reshape(batch * n, -1)
    terms = []
    for b in range(batch):
        for keys, concepts_sim, skip_self in (
            (teacher, vq @ vq.t(), True),
            (bank_keys, vq @ F.normalize(codebook, dim=1)[bank_concepts].t(), False),
        ):
            if len(keys) == 0:
                continue
            losses = []
            for i in range(b * n, (b + 1) * n):
                s = [float(student[i] @ keys[j]) / t for j in range(len(keys))]
                top = max(s)
                pos = [j for j in range(len(keys)) if concepts_sim[i, j] > hi and not (skip_self and j == i)]
                use = [j for j in range(len(keys)) if concepts_sim[i, j] > hi or concepts_sim[i, j] < lo]
                use = [j for j in use if not (skip_self and j == i)]
                denom = math.log(sum(math.exp(s[j] - top) for j in use))
                losses += [denom - (s[j] - top) for j in pos]
            if losses:
                terms.append(sum(losses) / len(losses))
    return sum(terms) / len(terms)


def test_contrastive_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(3)
    codebook = torch.randn(4, 6, generator=g)
    tokens = codebook[torch.randint(0, 4, (2, 5), generator=g)] + 0.1 * torch.randn(2, 5, 6, generator=g)
    proj, proj_ema = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    cfg = {"temperature": 0.07, "pos_threshold": 0.3, "neg_threshold": 0.1}
    bank = C.ConceptBank(4, size=4, dim=7, device="cpu")
    loss, index = C.concept_contrastive_loss(tokens, proj, proj_ema, codebook, bank, cfg)
    empty = torch.zeros(0, 7)
    expected = _naive_contrastive(tokens, proj, proj_ema, codebook, torch.zeros(0, dtype=torch.long), empty)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    bank.update(index.reshape(-1), torch.randn(10, 7, generator=g))
    concepts, keys = bank.entries()
    assert len(keys) > 0
    loss, _ = C.concept_contrastive_loss(tokens, proj, proj_ema, codebook, bank, cfg)
    expected = _naive_contrastive(tokens, proj, proj_ema, codebook, concepts, keys)
    assert float(loss) == pytest.approx(expected, rel=1e-4)


SMALL = {"reduced_dim": 6, "hidden_dim": 16, "heads": 1, "dropout": 0.1, "projection_dim": 8}


def test_head_rejects_a_different_token_count():
    segment = C.CauseSegment(dim=8, n_queries=16, n_classes=3, cfg=SMALL)
    out = segment.head(torch.randn(2, 16, 8), torch.randn(5, 8))
    assert out.shape == (2, 16, 6)
    with pytest.raises(ValueError, match="one resolution"):
        segment.head(torch.randn(2, 25, 8), torch.randn(5, 8))


@pytest.mark.parametrize("teacher_trainable", [False, True])
def test_stage3_trains_the_teacher_only_when_asked(teacher_trainable, tmp_path):
    cfg = {**SMALL, "grid_cell": 2, "modularity_temperature": 0.1, "checkpoint_every": 100,
           "stage3": {"epochs": 2, "batch_size": 4, "lr": 1e-2, "weight_decay": 0.0, "grad_clip": 1.0,
                      "lr_step_epochs": 1, "lr_gamma": 0.5, "teacher_trainable": teacher_trainable}}  # fmt: skip
    ctx = TaskContext(profile="smoke", config=cfg, datasets={}, device=torch.device("cpu"), work_dir=None,
                      progress=False, log=lambda m: None)  # fmt: skip
    torch.manual_seed(0)
    segment = C.CauseSegment(dim=8, n_queries=16, n_classes=3, cfg=cfg)
    probe = torch.nn.Parameter(torch.randn(3, 6))
    before = copy.deepcopy(segment.state_dict())
    probe_before = probe.detach().clone()
    stats = C.train_cluster_probe(segment, probe, torch.randn(5, 8), TokenMaps(), cfg, ctx, 3)
    after = segment.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("linear.") for k in changed)
    assert not torch.equal(probe_before, probe.detach())
    assert not any(k.startswith(("head.", "projection")) for k in changed)  # the student is not trained here
    assert any(k.startswith("head_ema.") for k in changed) == teacher_trainable
    assert math.isfinite(stats["stage3_modularity"]) and math.isfinite(stats["stage3_linear"])
    assert not any(p.requires_grad for p in segment.head_ema.parameters())  # frozen again afterwards


@pytest.fixture(scope="module")
def backbone():
    from sinder.models.weights import load_backbone

    return load_backbone("dinov2_tiny_random")


@pytest.mark.slow
@pytest.mark.parametrize("task_name,dataset", [("cause_cityscapes", "cityscapes"), ("cause_voc", "voc2012")])
def test_cause_clusters_the_synthetic_twins_well_above_chance(task_name, dataset, backbone, tmp_path):
    from benchmarks.core.registry import get_task
    from benchmarks.data.synth import write_synthetic

    root = tmp_path / dataset
    write_synthetic(dataset, root, seed=0)
    task = get_task(task_name)
    cfg = task.config("smoke")
    ctx = TaskContext(profile="smoke", config=cfg, datasets={dataset: root}, device=torch.device("cpu"),
                      feature_cache=tmp_path / "features", work_dir=tmp_path / "work", progress=False,
                      weights_sha256=backbone.weights_sha256, backbone_label="tiny", log=lambda m: None)  # fmt: skip
    result = task.run(backbone, ctx)
    metrics = result["metrics"]
    n = cfg["n_classes"]
    view = SegmentationView(open_dataset(dataset, root, "val"), cfg["resolution"], (), cfg["resize"],
                            preprocessing=DINOV2)
    labels = torch.stack([torch.from_numpy(view.load(i)[1]) for i in range(len(view))])
    chance = unsupervised_metrics(torch.randint(0, n, labels.shape, generator=torch.Generator().manual_seed(0)),
                                  labels, n)  # fmt: skip
    one_cluster = unsupervised_metrics(torch.zeros_like(labels), labels, n)
    print(f"{task_name} twin: mIoU {metrics['miou']:.2f} (CRF {metrics['crf_miou']:.2f}), Acc {metrics['acc']:.2f}; "
          f"random {chance['mIoU']:.2f} / {chance['Acc']:.2f}; one cluster {one_cluster['mIoU']:.2f}")  # fmt: skip
    assert metrics["miou"] > 3 * max(chance["mIoU"], one_cluster["mIoU"])
    assert metrics["crf_miou"] > 3 * max(chance["mIoU"], one_cluster["mIoU"])
    assert set(metrics) >= {"miou", "map", "acc", "crf_miou", "crf_map", "crf_acc"}
    assert all(0 <= metrics[k] <= 100 for k in ("map", "crf_map", "acc", "crf_acc"))
    assert result["hparams"]["stage3_teacher_trainable"] is True
    # every stage left a finished checkpoint: a second run skips training and scores the same
    assert {p.name for p in (tmp_path / "work").iterdir()} == {"cause_stage1.pt", "cause_stage2.pt", "cause_stage3.pt"}
    again = task.run(backbone, ctx)["metrics"]
    assert again["miou"] == pytest.approx(metrics["miou"]) and again["crf_miou"] == pytest.approx(metrics["crf_miou"])
