"""The frozen ViT backbone wrapper, the BN linear head and config resolution, each against a direct computation."""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.preprocessing import family_preprocessing

pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")

from benchmarks.segmentation.mmseg_env import ensure_mmseg  # noqa: E402

ensure_mmseg()

from benchmarks.core.padding import center_pad, center_pad_amounts  # noqa: E402
from benchmarks.segmentation.backbone import FrozenViTBackbone  # noqa: E402
from benchmarks.segmentation.config import load_config, resolve_config  # noqa: E402
from benchmarks.segmentation.head import BNLinearHead  # noqa: E402
from benchmarks.segmentation.train import build_segmentor  # noqa: E402
from sinder.models.vit import build_vit  # noqa: E402

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14


@pytest.fixture(scope="module")
def vit():
    return build_vit("dinov2_tiny", seed=0).eval()


def test_center_pad_amounts_and_values():
    assert center_pad_amounts(50, 14) == (3, 3)
    assert center_pad_amounts(57, 14) == (6, 7)
    assert center_pad_amounts(56, 14) == (0, 0)
    x = torch.ones(1, 1, 57, 56)
    padded, (top, bottom, left, right) = center_pad(x, 14)
    assert padded.shape[-2:] == (70, 56) and (top, bottom, left, right) == (6, 7, 0, 0)
    assert padded[..., :6, :].abs().sum() == 0 and padded[..., 6:63, :].eq(1).all()


def test_backbone_maps_equal_the_vit_on_the_padded_input(vit):
    wrapper = FrozenViTBackbone(layers=4).attach(vit)
    x = torch.randn(2, 3, 50, 60)
    maps = wrapper(x)
    padded = F.pad(x, (5, 5, 3, 3))  # rows 50 -> 56 (3 + 3), cols 60 -> 70 (5 + 5)
    expected = vit.get_intermediate_layers(padded, n=[2, 3, 4, 5], reshape=True, norm=True)
    assert len(maps) == 4 and maps[0].shape == (2, 96, 4, 5)
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want)
    assert not maps[0].is_inference()  # the head can save it for backward


def test_backbone_is_frozen_and_outside_the_state(vit):
    cfg = load_config("ade20k", "linear")
    cfg = resolve_config(cfg, preprocessing=DINOV2, data_root="unused", embed_dim=96, work_dir="unused")
    segmentor = build_segmentor(cfg, vit)
    names = [name for name, _ in segmentor.named_parameters()]
    assert names and all(name.startswith("decode_head.") for name in names)
    assert all(key.startswith("decode_head.") for key in segmentor.state_dict())
    segmentor.train()
    assert segmentor.decode_head.training and not vit.training
    assert not any(p.requires_grad for p in vit.parameters())
    inputs = torch.randn(2, 3, 56, 56)
    logits = segmentor.decode_head(segmentor.extract_feat(inputs))
    logits.sum().backward()
    assert segmentor.decode_head.conv_seg.weight.grad is not None
    assert all(p.grad is None for p in vit.parameters())


def test_backbone_block_indices_and_errors(vit):
    assert FrozenViTBackbone(layers=1).attach(vit).block_indices == [5]
    assert FrozenViTBackbone(layers=[0, 3]).attach(vit).block_indices == [0, 3]
    with pytest.raises(ValueError, match="out of range"):
        FrozenViTBackbone(layers=[6]).attach(vit).block_indices  # noqa: B018
    with pytest.raises(RuntimeError, match="attach"):
        FrozenViTBackbone()(torch.zeros(1, 3, 14, 14))


def test_bn_linear_head_is_bn_then_1x1_conv_of_resized_concat():
    torch.manual_seed(0)
    head = BNLinearHead(in_channels=[8, 8], in_index=[0, 2], channels=16, num_classes=5)
    head.eval()
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
        head.bn.weight.normal_()
    maps = (torch.randn(2, 8, 4, 5), torch.randn(2, 8, 4, 5), torch.randn(2, 8, 2, 3))
    up = F.interpolate(maps[2], size=(4, 5), mode="bilinear", align_corners=False)
    x = torch.cat([maps[0], up], dim=1)
    bn = (x - head.bn.running_mean[None, :, None, None]) / torch.sqrt(head.bn.running_var + head.bn.eps)[None, :, None, None]
    bn = bn * head.bn.weight[None, :, None, None] + head.bn.bias[None, :, None, None]
    expected = F.conv2d(bn, head.conv_seg.weight, head.conv_seg.bias)
    torch.testing.assert_close(head(maps), expected)
    assert head.dropout is None


def test_bn_linear_head_rejects_wrong_channels():
    with pytest.raises(ValueError, match="set channels to their sum"):
        BNLinearHead(in_channels=[8, 8], in_index=[0, 1], channels=8, num_classes=3)


def test_resolve_config_scales_every_resolution_for_smoke():
    cfg = resolve_config(
        load_config("voc2012", "multiscale"), preprocessing=DINOV2,
        data_root="/data/voc", embed_dim=96, work_dir="/tmp/w",
        world_size=2, overrides={"crop": 70, "iterations": 50, "warmup": 5, "batch_size": 4, "eval_images": 3},
    )  # fmt: skip
    factor = 70 / 640
    assert cfg.model.data_preprocessor.size == (70, 70)
    assert cfg.model.test_cfg.crop_size == (70, 70) and cfg.model.test_cfg.stride == (round(426 * factor),) * 2
    train = {t["type"]: t for t in cfg.train_dataloader.dataset.pipeline}
    assert train["RandomCrop"]["crop_size"] == (70, 70)
    assert train["RandomResize"]["scale"] == (round(2560 * factor), 70)
    resizes = cfg.tta_pipeline[1]["transforms"][0]
    assert [r["scale"][1] for r in resizes] == [round(round(640 * r) * factor) for r in (1.0, 1.32, 1.73, 2.28, 3.0)]
    test_resize = [t for t in cfg.test_dataloader.dataset.pipeline if t["type"] == "Resize"][0]
    val_resize = [t for t in cfg.val_dataloader.dataset.pipeline if t["type"] == "Resize"][0]
    assert test_resize["scale"] == val_resize["scale"] == (round(2560 * factor), 70)  # scaled once, not twice
    assert cfg.test_dataloader.dataset.indices == 3 and "indices" not in cfg.val_dataloader.dataset
    assert cfg.train_dataloader.batch_size == 2  # global 4 over 2 ranks
    assert cfg.launcher == "pytorch"
    assert cfg.model.decode_head.in_channels == [96] * 4 and cfg.model.decode_head.channels == 384
    assert cfg.param_scheduler[0].warmup_iters == 5 and cfg.param_scheduler[0].max_iters == 50
    assert cfg.train_cfg.max_iters == 50


def test_paper_configs_hold_the_protocol():
    linear = load_config("ade20k", "linear")
    assert linear.model.decode_head.in_index == [3] and linear.model.test_cfg.stride == (341, 341)
    assert linear.optim_wrapper.optimizer.lr == 1e-3 and linear.optim_wrapper.optimizer.weight_decay == 1e-4
    assert linear.train_cfg.max_iters == 40000 and linear.param_scheduler[0].warmup_iters == 1500
    assert linear.param_scheduler[0].power == 1.0 and linear.train_dataloader.batch_size == 16
    assert linear.train_dataloader.dataset.reduce_zero_label is True
    multi = load_config("voc2012", "multiscale")
    assert multi.model.decode_head.in_index == [0, 1, 2, 3] and multi.tta_ratios == [1.0, 1.32, 1.73, 2.28, 3.0]
    assert multi.model.decode_head.num_classes == 21 and multi.model.data_preprocessor.size == (640, 640)
    with pytest.raises(ValueError, match="not divisible"):
        resolve_config(linear, preprocessing=DINOV2, data_root="x", embed_dim=96, work_dir="w", world_size=3)
