"""One place for each shared default: ImageNet mean/std, the device, the global-batch policy, mu."""

import inspect

import pytest
import torch

from benchmarks.core.distributed import per_rank_batch
from sinder.utils import images
from sinder.utils.device import default_device


def test_every_normalization_uses_the_backbones_mean_and_std():
    """No loader holds statistics of its own (they take the backbone's: benchmarks.core.preprocessing); the
    ImageNet ones reach DINOv2 from sinder.utils.images, through its family default and its releases' configs."""
    from benchmarks.classification import transforms as cls_t
    from benchmarks.core.preprocessing import family_preprocessing
    from benchmarks.depth import transforms as depth_t
    from benchmarks.unsupervised import data as unsup_d
    from sinder.models.adapter import FAMILY_MEAN_STD
    from sinder.models.backbone import PretrainedConfig

    for module in (cls_t, depth_t, unsup_d):
        assert not [n for n in vars(module) if n in ("MEAN", "STD", "IMAGENET_MEAN", "IMAGENET_STD")], module
    assert FAMILY_MEAN_STD["dinov2"][0] is images.IMAGENET_MEAN and FAMILY_MEAN_STD["dinov2"][1] is images.IMAGENET_STD
    dinov2 = family_preprocessing("dinov2", 14)
    assert (dinov2.mean, dinov2.std) == (images.IMAGENET_MEAN, images.IMAGENET_STD)
    fields = {f.name: f.default for f in PretrainedConfig.__dataclass_fields__.values()}
    assert fields["mean"] is images.IMAGENET_MEAN and fields["std"] is images.IMAGENET_STD


def test_device_default():
    assert default_device("cpu") == "cpu" and default_device("cuda:1") == "cuda:1"
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_global_batch_must_split_evenly_across_ranks():
    assert per_rank_batch(1024, 4) == 256 and per_rank_batch(16, 1) == 16
    with pytest.raises(ValueError, match=r"global batch batch_size=16 is not divisible by the 3 ranks of this run: "
                                         r"use a multiple of 3"):
        per_rank_batch(16, 3)
    with pytest.raises(ValueError, match="stage1.batch_size=2 is not divisible by the 4 ranks"):
        per_rank_batch(2, 4, "stage1.batch_size")  # never floored to 1 per rank


def test_mu_defaults_come_from_sinder_defects():
    from sinder.defects import census, loss
    from sinder.defects import detect as defects
    from sinder.remedies import ttr
    from sinder.repair import run as repair
    assert repair.RepairConfig().mu == defects.DEFAULT_MU
    for fn in (defects.find_defects, loss.neighbor_loss, census.census):
        params = inspect.signature(fn).parameters
        assert params["mu"].default == defects.DEFAULT_MU, fn.__name__
    for fn in (ttr.outlier_mask, ttr.fit_register_neurons, defects.high_norm_mask):
        params = inspect.signature(fn).parameters
        assert (params["mu"].default, params["min_ratio"].default) == (defects.HIGH_NORM_Z,
                                                                        defects.HIGH_NORM_MIN_RATIO), fn.__name__
