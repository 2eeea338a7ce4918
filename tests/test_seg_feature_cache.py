"""The smoke linear probe's feature cache: cached maps equal the backbone's on the same crop, the un-augmented
pipeline gives the same crop on every draw, and the record says what was cached and that augmentation was reduced."""

import copy

import numpy as np
import pytest
import torch

from benchmarks.core.preprocessing import family_preprocessing

pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")

from benchmarks.segmentation.mmseg_env import ensure_mmseg  # noqa: E402

ensure_mmseg()

from benchmarks.data.synth import write_synthetic  # noqa: E402
from benchmarks.segmentation.backbone import FrozenViTBackbone  # noqa: E402
from benchmarks.segmentation.config import load_config, resolve_config, unaugmented_train_pipeline  # noqa: E402
from benchmarks.segmentation.task import (  # noqa: E402
    SegADE20kLinear,
    SegVOCMultiscale,
    dataset_base,
    feature_cache_record,
)
from benchmarks.segmentation.train import build_segmentor  # noqa: E402
from sinder.models.vit import build_vit  # noqa: E402

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14


@pytest.fixture(scope="module")
def vit():
    model = build_vit("dinov2_tiny", seed=0).eval()
    model.weights_sha256 = "a" * 64
    return model


def direct_maps(vit, x):
    """The ViT's last-4-block maps of ``x`` (56x56: already a multiple of 14, no padding), computed directly."""
    with torch.no_grad():
        return vit.get_intermediate_layers(x, n=[2, 3, 4, 5], reshape=True, norm=True)


def test_cached_maps_equal_the_backbone_on_the_same_crops(vit):
    torch.manual_seed(0)
    wrapper = FrozenViTBackbone(layers=4, cache_train_features=True).attach(vit).train()
    x = torch.randn(3, 3, 56, 56)
    first = wrapper(x)
    assert wrapper.feature_cache.stats.as_dict() == {"entries": 3, "hits": 0, "misses": 3}
    new = torch.randn(1, 3, 56, 56)
    batch = torch.cat([x[2:3], new, x[0:1], x[2:3]])  # two seen crops (one twice) and a new one
    second = wrapper(batch)
    assert wrapper.feature_cache.stats.as_dict() == {"entries": 4, "hits": 3, "misses": 4}
    for got, want in zip(first + second, direct_maps(vit, x) + direct_maps(vit, batch)):
        torch.testing.assert_close(got, want)
    assert not second[0].is_inference() and second[0].shape == (4, 96, 4, 4)


def test_returned_maps_are_copies_and_eval_bypasses_the_cache(vit):
    torch.manual_seed(1)
    wrapper = FrozenViTBackbone(layers=4, cache_train_features=True).attach(vit).train()
    x = torch.randn(2, 3, 56, 56)
    out = wrapper(x)
    out[3].mul_(0)  # a caller scribbling on its maps must not reach the cache
    torch.testing.assert_close(wrapper(x)[3], direct_maps(vit, x)[3])
    stats = wrapper.feature_cache.stats.as_dict()
    wrapper.eval()  # the test loop: the real backbone path, no lookups
    torch.testing.assert_close(wrapper(x)[3], direct_maps(vit, x)[3])
    assert wrapper.feature_cache.stats.as_dict() == stats


def test_other_weights_never_get_cached_maps(vit):
    torch.manual_seed(2)
    wrapper = FrozenViTBackbone(layers=4, cache_train_features=True).attach(vit).train()
    x = torch.randn(2, 3, 56, 56)
    wrapper(x)
    other = build_vit("dinov2_tiny", seed=1).eval()
    other.weights_sha256 = "b" * 64
    wrapper.attach(other)
    assert wrapper.feature_cache is None
    got = wrapper(x)[3]
    torch.testing.assert_close(got, direct_maps(other, x)[3])
    assert not torch.allclose(got, direct_maps(vit, x)[3])


def test_unaugmented_pipeline_config():
    cfg = resolve_config(load_config("ade20k", "linear"), preprocessing=DINOV2,
                         data_root="/d", embed_dim=96, work_dir="/w",
                         overrides={"crop": 84, "feature_cache": True})  # fmt: skip
    pipeline = cfg.train_dataloader.dataset.pipeline
    kinds = [t["type"] for t in pipeline]
    assert kinds == ["LoadImageFromFile", "LoadAnnotations", "Resize", "CenterCrop", "PackSegInputs"]
    assert pipeline[2]["scale"] == (round(2048 * 84 / 512), 84) and pipeline[3]["crop_size"] == (84, 84)
    assert cfg.model.backbone.cache_train_features is True
    assert cfg.train_augmentation.startswith("reduced:") and "no RandomFlip" in cfg.train_augmentation
    test_kinds = [t["type"] for t in cfg.test_dataloader.dataset.pipeline]
    # Evaluation keeps the real pipeline.
    assert test_kinds == ["LoadImageFromFile", "Resize", "LoadAnnotations", "PackSegInputs"]

    plain = resolve_config(load_config("ade20k", "linear"), preprocessing=DINOV2,
                           data_root="/d", embed_dim=96, work_dir="/w",
                           overrides={"crop": 84})  # fmt: skip
    assert "RandomCrop" in [t["type"] for t in plain.train_dataloader.dataset.pipeline]
    assert plain.model.backbone.get("cache_train_features", False) is False
    assert plain.train_augmentation.startswith("full")

    plain.train_dataloader.dataset.pipeline.insert(2, dict(type="RandomRotate", prob=0.5, degree=10))
    with pytest.raises(ValueError, match="RandomRotate has no un-augmented replacement"):
        unaugmented_train_pipeline(plain)


def test_profiles_enable_the_cache_for_smoke_linear_only():
    assert SegADE20kLinear().config("smoke")["overrides"]["feature_cache"] is True
    assert "feature_cache" not in SegADE20kLinear().config("paper")["overrides"]
    assert "feature_cache" not in SegVOCMultiscale().config("smoke")["overrides"]
    assert "feature_cache" not in SegVOCMultiscale().config("smoke")["overrides"]


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    write_synthetic("ade20k", root, seed=3, n_train=2, n_val=1)
    return dataset_base("ade20k", root)


def _inputs(cfg, segmentor, draws):
    """Preprocessed training inputs of image 0, drawn ``draws`` times through the config's training pipeline."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    dataset = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))
    batch = pseudo_collate([dataset[0] for _ in range(draws)])
    return segmentor.data_preprocessor(batch, training=True)["inputs"]


@pytest.mark.parametrize("cache", [True, False])
def test_training_crops_repeat_only_without_augmentation(vit, ade_root, cache):
    np.random.seed(0)  # mmseg's random transforms draw from numpy's global generator
    cfg = resolve_config(load_config("ade20k", "linear"), preprocessing=DINOV2,
                         data_root=ade_root, embed_dim=96, work_dir="/w",
                         overrides={"crop": 56, "feature_cache": cache})  # fmt: skip
    segmentor = build_segmentor(cfg, vit).train()
    inputs = _inputs(cfg, segmentor, draws=3)
    same = [torch.equal(inputs[0], inputs[i]) for i in (1, 2)]
    assert all(same) if cache else not any(same)
    maps = segmentor.extract_feat(inputs)
    want = direct_maps(vit, inputs)
    torch.testing.assert_close(maps[3], want[3])
    if cache:
        assert segmentor.backbone.feature_cache.stats.as_dict() == {"entries": 1, "hits": 0, "misses": 3}
        served = segmentor.extract_feat(inputs[:1])[3]  # from the cache
        torch.testing.assert_close(served, want[3][:1])
        assert segmentor.backbone.feature_cache.stats.hits == 1
        record = feature_cache_record(cfg, segmentor)
        assert record["feature_cache"].startswith("in memory") and "a" * 64 in record["feature_cache"]
        assert "blocks [2, 3, 4, 5]" in record["feature_cache"] and "56x56 crop" in record["feature_cache"]
        assert record["train_augmentation"].startswith("reduced")
        assert record["feature_cache_stats"] == {"entries": 1, "hits": 1, "misses": 3}
    else:
        assert segmentor.backbone.feature_cache is None
        record = feature_cache_record(cfg, segmentor)
        assert record["feature_cache"].startswith("none") and record["train_augmentation"].startswith("full")
        assert "feature_cache_stats" not in record


def test_center_crop_keeps_image_and_label_aligned(ade_root):
    """The cached pipeline's sample is the center 56x56 window of the resized image and label, the same window."""
    from mmseg.registry import DATASETS

    cfg = resolve_config(load_config("ade20k", "linear"), preprocessing=DINOV2,
                         data_root=ade_root, embed_dim=96, work_dir="/w",
                         overrides={"crop": 56, "feature_cache": True})  # fmt: skip
    uncropped = copy.deepcopy(cfg.train_dataloader.dataset)
    uncropped.pipeline = [t for t in uncropped.pipeline if t["type"] != "CenterCrop"]
    sample = DATASETS.build(copy.deepcopy(cfg.train_dataloader.dataset))[0]
    full = DATASETS.build(uncropped)[0]
    image, label = sample["inputs"], sample["data_samples"].gt_sem_seg.data
    big_image, big_label = full["inputs"], full["data_samples"].gt_sem_seg.data
    h, w = big_image.shape[-2:]
    assert min(h, w) == 56 and max(h, w) > 56  # the synthetic images are not square: a crop really happens
    top, left = round((h - 56) / 2), round((w - 56) / 2)
    assert image.shape[-2:] == label.shape[-2:] == (56, 56)
    assert torch.equal(image, big_image[:, top : top + 56, left : left + 56])
    assert torch.equal(label, big_label[:, top : top + 56, left : left + 56])
