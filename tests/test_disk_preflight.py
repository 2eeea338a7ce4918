"""`sinder-bench run`'s free-space preflight is computed from what the run will write (issue 23).

The free-space reader (``shutil.disk_usage``) is monkeypatched: a run whose estimate exceeds what is free by one
byte is refused before any work (one line naming the folder, the estimate and what is free; nothing written), and
one with exactly that much free starts. The estimate is computed here independently from the dataset on disk (its
image files) and the backbone's width: KNN caches one float32 row of the token width and an int64 label per image.
"""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.core import disk
from benchmarks.core.runner import PreflightError, run_suite
from benchmarks.data.synth import write_synthetic

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}


def _free(monkeypatch, free: int) -> None:
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40 - free, free))


def _imagenet(root: Path, per_class: int) -> int:
    """A synthetic ImageNet under ``root/imagenet``; returns its number of image files (train + val)."""
    write_synthetic("imagenet", root / "imagenet", seed=0, n_train=per_class, n_val=1, n_classes=3)
    return sum(1 for p in (root / "imagenet").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _expected_knn_run(n_images: int, width: int) -> int:
    """Independently: the features (float32 x width + an int64 label per image), one record, the run's log."""
    return n_images * (4 * width + 8) + disk.RECORD_BYTES + disk.LOG_BYTES


def _run(tmp_path, data, backbone=None, models=None):
    return run_suite("imagenet_knn", [backbone] if backbone else None, models=models, profile="paper",
                     data_root=data, out=tmp_path / "runs", cache_dir=tmp_path / "cache", progress=False,
                     log=lambda msg: None)  # fmt: skip


@pytest.fixture
def quick_knn(monkeypatch):
    """The task's work replaced by a constant result: these tests are about the preflight."""
    from benchmarks.classification.task import ImageNetKNN

    monkeypatch.setattr(
        ImageNetKNN, "run", lambda self, backbone, ctx: {"metrics": {"top1": 1.0, "top5": 1.0}}
    )


@pytest.mark.parametrize("per_class", [2, 6])
def test_a_run_needing_more_than_is_free_is_refused_before_any_work(
    tmp_path, monkeypatch, quick_knn, per_class
):
    data = tmp_path / "data"
    n_images = _imagenet(data, per_class)
    need = _expected_knn_run(n_images, width=96)  # dinov2_tiny_defective: 96-wide tokens
    _free(monkeypatch, need - 1)
    with pytest.raises(PreflightError) as err:
        _run(tmp_path, data, "dinov2_tiny_defective")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "cache") in message and str(tmp_path / "runs") in message
    assert f"{(need - 1) / 2**20:.0f} MiB free, the run writes about {need / 2**20:.0f} MiB" in message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing written
    _free(monkeypatch, need)  # exactly enough: the run starts and records its task
    summary = _run(tmp_path, data, "dinov2_tiny_defective")
    assert [r["task"] for r in summary.ran] == ["imagenet_knn"]


def test_the_estimate_grows_with_the_feature_width(tmp_path, monkeypatch, quick_knn):
    from sinder.models.vit import build_vit

    data = tmp_path / "data"
    n_images = _imagenet(data, 2)
    needs = {}
    for width in (32, 128):
        model = build_vit(
            {"embed_dim": width, "depth": 2, "num_heads": 2, "patch_size": 14, "img_size": 56}, seed=0
        )
        model.name, model.weights_sha256, model.weights_source = f"w{width}", f"{width:064d}", "built"
        needs[width] = need = _expected_knn_run(n_images, width)
        _free(monkeypatch, need - 1)
        with pytest.raises(PreflightError, match="free some space"):
            _run(tmp_path, data, models={f"w{width}": model})
        _free(monkeypatch, need)
        assert _run(tmp_path, data, models={f"w{width}": model}).failed == []
    assert needs[128] - needs[32] == n_images * 4 * 96


def test_each_task_estimate_against_an_independent_count():
    """The head checkpoints: the depth head's parameters counted on a real (CPU) head, the linear probe's 52
    heads by their shapes, both with their optimizer state and written through a temp copy."""
    from benchmarks.classification.task import ImageNetLinear
    from benchmarks.depth.task import DepthNYULinear4
    from benchmarks.depth.train import DepthConfig, make_head

    size = disk.BackboneSize(embed_dim=48, depth=4, patch_size=14, state_bytes=10**6)
    depth = DepthNYULinear4()
    config = depth.config("paper")
    params = sum(p.numel() for p in make_head(DepthConfig.from_dict(config), 48).parameters())
    assert depth.disk_bytes("paper", config, size, lambda entry: 0) == 2 * params * 4 * 3
    linear = ImageNetLinear()
    config = linear.config("paper")
    widths = [48 * (n + a) for n in config["n_last_blocks"] for a in (int(x) for x in config["avgpool"])
              for _ in config["lrs"]]  # fmt: skip
    assert len(widths) == 52
    assert (
        linear.disk_bytes("paper", config, size, lambda entry: 0)
        == 2 * sum((w + 1) * 1000 for w in widths) * 4 * 2
    )


def test_a_remedied_backbone_adds_a_copy_of_its_weights():
    """``+remedy`` writes a checkpoint of the backbone's size: the estimate holds one per remedied spec."""

    class Nothing:
        name = "nothing"

        def disk_bytes(self, *args):
            return 0

    size = disk.BackboneSize(96, 4, 14, state_bytes=12345)
    plain = disk.run_disk_needs([("a", [Nothing()])], {"a": size, "b": size}, {"nothing": {}}, lambda e: 0,
                                profile="paper")  # fmt: skip
    remedied = disk.run_disk_needs([("a", [Nothing()]), ("b", [Nothing()])], {"a": size, "b": size},
                                   {"nothing": {}}, lambda e: 0, profile="paper", copies=["b"])  # fmt: skip
    assert remedied.cache - plain.cache == 12345
    assert remedied.out - plain.out == disk.RECORD_BYTES


def test_state_bytes_is_the_weights_size():
    from sinder.models.state_io import state_bytes

    state = {
        "a": torch.zeros(3, 4),
        "b": torch.zeros(5, dtype=torch.float16),
        "c": torch.zeros(2, dtype=torch.int64),
    }
    assert state_bytes(state) == 12 * 4 + 5 * 2 + 2 * 8
