"""STEGO: the loss against a direct computation, training on the synthetic Cityscapes twin, exact resume."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.preprocessing import family_preprocessing
from benchmarks.core.runner import TaskContext
from benchmarks.data import open_dataset
from benchmarks.unsupervised import stego as S
from benchmarks.unsupervised.data import SegmentationView, parse_crops
from benchmarks.unsupervised.metrics import unsupervised_metrics

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    from benchmarks.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth") / "cityscapes"
    write_synthetic("cityscapes", root, seed=0)
    return root


@pytest.fixture(scope="module")
def backbone():
    from sinder.models.weights import load_backbone

    return load_backbone("dinov2_tiny_random")


def make_ctx(task, root, backbone, tmp, work_dir=None, **overrides):
    cfg = {**task.config("smoke"), **overrides}
    return TaskContext(profile="smoke", config=cfg, datasets={"cityscapes": root}, device=torch.device("cpu"),
                       feature_cache=tmp / "features", work_dir=work_dir, progress=False,
                       weights_sha256=backbone.weights_sha256, backbone_label="tiny", log=lambda m: None)  # fmt: skip


def test_pair_loss_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(1, 6, 2, 3, generator=g), torch.randn(1, 6, 2, 3, generator=g)
    c1, c2 = torch.randn(1, 4, 2, 3, generator=g), torch.randn(1, 4, 2, 3, generator=g)
    loss, cd = S.pair_loss(f1, f2, c1, c2, shift=0.2)
    a, b = F.normalize(f1[0].flatten(1), dim=0), F.normalize(f2[0].flatten(1), dim=0)  # C x 6 points
    fd = a.t() @ b  # point i of map 1 vs point j of map 2
    fd_centred = fd - fd.mean(1, keepdim=True) + fd.mean()
    s = F.normalize(c1[0].flatten(1), dim=0).t() @ F.normalize(c2[0].flatten(1), dim=0)
    expected = -s.clamp(min=0) * (fd_centred - 0.2)
    assert torch.allclose(loss.reshape(6, 6), expected, atol=1e-6)
    assert torch.allclose(cd.reshape(6, 6), s, atol=1e-6)
    plain, _ = S.pair_loss(f1, f2, c1, c2, shift=0.2, pointwise=False, zero_clamp=False)
    assert torch.allclose(plain.reshape(6, 6), -s * (fd - 0.2), atol=1e-6)


def test_cluster_probe_loss_and_derangement():
    probe = S.ClusterProbe(5, 3)
    code = torch.randn(2, 5, 4, 4)
    cos = F.normalize(code, dim=1).permute(0, 2, 3, 1) @ F.normalize(probe.centroids, dim=1).t()
    assert torch.allclose(probe.loss(code), -cos.max(-1).values.mean(), atol=1e-6)
    for n in (2, 3, 16):
        perm = S.derangement(n, "cpu")
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == torch.arange(n)).any()


def test_positives_are_among_the_first_neighbours():
    nns = torch.arange(40).reshape(4, 10)  # row i: neighbours 10i .. 10i+9 (10i is "itself")
    picks = S._positives(nns, torch.tensor([0, 1, 2, 3, 3]), num_neighbors=7, seed=0, step=5)
    offsets = picks - torch.tensor([0, 10, 20, 30, 30])
    assert ((offsets >= 1) & (offsets <= 7)).all()
    assert torch.equal(picks, S._positives(nns, torch.tensor([0, 1, 2, 3, 3]), 7, seed=0, step=5))


@pytest.mark.slow
def test_stego_clusters_the_synthetic_cityscapes_well_above_chance(cityscapes, backbone, tmp_path):
    from benchmarks.core.registry import get_task

    task = get_task("stego_cityscapes")
    ctx = make_ctx(task, cityscapes, backbone, tmp_path)
    result = task.run(backbone, ctx)
    metrics, hparams = result["metrics"], result["hparams"]
    # chance: every pixel of the evaluation set assigned a uniformly random cluster, then the same matching
    view = SegmentationView(open_dataset("cityscapes", cityscapes, "val"), ctx.config["eval_resolution"],
                            preprocessing=DINOV2)  # fmt: skip
    labels = torch.stack([torch.from_numpy(view.load(i)[1]) for i in range(len(view))])
    chance = unsupervised_metrics(torch.randint(0, 27, labels.shape, generator=torch.Generator().manual_seed(0)),
                                  labels, 27)  # fmt: skip
    one_cluster = unsupervised_metrics(torch.zeros_like(labels), labels, 27)
    print(f"stego cityscapes twin: cluster mIoU {metrics['cluster_miou']:.2f} / Acc {metrics['cluster_acc']:.2f}; "
          f"random {chance['mIoU']:.2f} / {chance['Acc']:.2f}; one cluster {one_cluster['mIoU']:.2f}")  # fmt: skip
    assert metrics["cluster_miou"] > 3 * max(chance["mIoU"], one_cluster["mIoU"])
    assert metrics["cluster_acc"] > one_cluster["Acc"] + 15
    assert metrics["linear_miou"] > metrics["cluster_miou"] * 0.5
    assert set(metrics) >= {"cluster_miou", "cluster_acc", "linear_miou", "linear_acc", "cluster_miou_nocrf"}
    assert hparams["crf_backend"] in ("pydensecrf", "torch-permutohedral")
    assert hparams["loss_variant"] == "dinov2" and hparams["loss"]["pos_intra_shift"] == 0.45
    assert hparams["token_source"] == "cached"


def test_killed_training_resumes_to_the_same_model(cityscapes, backbone, tmp_path):
    from benchmarks.core.registry import get_task
    from benchmarks.unsupervised.tokens import TokenSource, knn_indices

    task = get_task("stego_cityscapes")
    overrides = dict(train_resolution=56, knn_resolution=56, steps=10, checkpoint_every=4)
    base = open_dataset("cityscapes", cityscapes, "train")
    view = SegmentationView(base, 56, parse_crops([["five", 0.5]]), name="cs", preprocessing=DINOV2)

    def train(work_dir, fail_at_call=None):
        ctx = make_ctx(task, cityscapes, backbone, tmp_path, work_dir=work_dir, **overrides)
        cfg = {**ctx.config, "loss": ctx.config["loss_weights"]["dinov2"]}
        nns = knn_indices(backbone, view, ctx, k=8)
        source = TokenSource(backbone, view, ctx)
        if fail_at_call is not None:
            calls, real = [0], source.tokens_of

            def flaky(*args, **kwargs):
                calls[0] += 1
                if calls[0] == fail_at_call:
                    raise RuntimeError("killed")
                return real(*args, **kwargs)

            source.tokens_of = flaky
        torch.manual_seed(0)
        model = S.StegoModel(source.channels, 27)
        S.train_stego(model, source, nns, cfg, ctx, 27)
        return model

    reference = train(tmp_path / "uninterrupted")
    with pytest.raises(RuntimeError, match="killed"):
        train(tmp_path / "resumed", fail_at_call=2 * 6 + 1)  # dies in step 6, after the step-4 checkpoint
    saved = torch.load(tmp_path / "resumed" / "stego.pt", weights_only=True)
    assert saved["step"] == 4
    resumed = train(tmp_path / "resumed")
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
