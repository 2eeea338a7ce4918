"""mmseg training killed mid-way resumes to the uninterrupted head exactly, without reloading the batches it
trained on, and from the newest checkpoint that is whole (mmengine writes its files in place)."""

import pytest
import torch

from benchmarks.core.preprocessing import family_preprocessing

pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")

from benchmarks.data.synth import write_synthetic  # noqa: E402
from benchmarks.segmentation import train as ST  # noqa: E402
from benchmarks.segmentation.config import load_config, resolve_config  # noqa: E402
from benchmarks.segmentation.mmseg_env import ensure_mmseg  # noqa: E402
from benchmarks.segmentation.resume import resume_point  # noqa: E402
from benchmarks.segmentation.task import dataset_base  # noqa: E402
from sinder.models.weights import load_backbone  # noqa: E402

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14

# Full augmentation (random resize, crop, flip, photometric distortion: numpy and python RNG draws in the
# pipeline), so an exact resume needs the data position and the generators.
SMOKE = {"crop": 42, "iterations": 7, "warmup": 2, "batch_size": 2, "lr": 3e-3, "log_level": "ERROR",
         "eval_images": 2, "checkpoint_every": 2}  # fmt: skip


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ensure_mmseg()
    root = tmp_path_factory.mktemp("voc")
    write_synthetic("voc2012", root, seed=1, n_train=6, n_val=2)
    return {"root": dataset_base("voc2012", root), "backbone": load_backbone("dinov2_tiny_random")}


def train(setup, work, monkeypatch, die_at=None, loads=None):
    cfg = resolve_config(load_config("voc2012", "linear"), preprocessing=DINOV2, data_root=setup["root"], work_dir=work,
                         embed_dim=setup["backbone"].embed_dim, overrides=SMOKE)  # fmt: skip
    real_build = ST.build_segmentor

    def build(cfg, backbone):
        segmentor = real_build(cfg, backbone)
        calls, step = [0], segmentor.train_step

        def train_step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == die_at:
                raise Killed(f"killed in iteration {die_at}")
            return step(*args, **kwargs)

        segmentor.train_step = train_step
        return segmentor

    monkeypatch.setattr(ST, "build_segmentor", build)
    if loads is not None:  # count the training batches the data pipeline produces
        from mmengine.dataset import BaseDataset

        real_getitem = BaseDataset.__getitem__
        monkeypatch.setattr(BaseDataset, "__getitem__", lambda self, i: (loads.append(i), real_getitem(self, i))[1])
    try:
        return ST.train_and_evaluate(cfg, setup["backbone"], tta=False)
    finally:
        monkeypatch.undo()


def test_killed_training_resumes_to_the_uninterrupted_head(setup, tmp_path, monkeypatch):
    reference = train(setup, tmp_path / "once", monkeypatch)
    with pytest.raises(Killed):
        train(setup, tmp_path / "killed", monkeypatch, die_at=6)  # checkpoints after iterations 2 and 4
    assert resume_point(tmp_path / "killed").endswith("iter_4.pth")
    loads = []
    resumed = train(setup, tmp_path / "killed", monkeypatch, loads=loads)
    assert resumed["resumed"] is True and reference["resumed"] is False
    # 3 training batches of 2 images (iterations 5-7) plus the 2 test images: nothing reloaded to skip
    assert len(loads) == 3 * 2 + 2
    a, b = reference["segmentor"].state_dict(), resumed["segmentor"].state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["single_scale"] == reference["single_scale"]


def test_resume_point_skips_a_truncated_checkpoint(setup, tmp_path, monkeypatch):
    work = tmp_path / "work"
    with pytest.raises(Killed):
        train(setup, work, monkeypatch, die_at=6)
    assert resume_point(work).endswith("iter_4.pth")
    # a kill while mmengine wrote iter_4.pth (in place) and the pointer to it
    (work / "iter_4.pth").write_bytes((work / "iter_4.pth").read_bytes()[:100])
    assert resume_point(work).endswith("iter_2.pth")
    (work / "last_checkpoint").write_text("")
    assert resume_point(work).endswith("iter_2.pth")
    (work / "iter_2.pth").unlink()
    assert resume_point(work) is None
