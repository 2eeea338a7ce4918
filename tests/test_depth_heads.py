"""Depth heads (shapes, the linear head against a direct computation, every DPT parameter trained), prediction
at arbitrary frame sizes, and the train augmentation (joint geometry of image and depth)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.depth.features import backbone_features
from benchmarks.depth.heads import DPTDepthHead, LinearDepthHead, build_head
from benchmarks.depth.train import DepthConfig, make_head, predict
from benchmarks.depth.transforms import TrainTransform, rotate, scaled_box
from sinder.models.adapter import FAMILY_MEAN_STD
from sinder.models.vit import build_vit

MEAN, STD = FAMILY_MEAN_STD["dinov2"]


def _features(n_layers, dim=16, h=4, w=6, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, dim, h, w, generator=gen), torch.randn(batch, dim, generator=gen)) for _ in range(n_layers)]


def test_linear_head_is_one_conv_over_upsampled_patch_and_cls():
    torch.manual_seed(0)
    head = build_head("linear4", 16, min_depth=0.5, max_depth=4.0, n_bins=8).eval()
    feats = _features(4)
    feats[1] = (F.avg_pool2d(feats[1][0], 2), feats[1][1])  # a coarser map is resized to the first's x4 too
    maps = []
    for patch, cls in feats:
        x = torch.cat([patch, cls[:, :, None, None].expand_as(patch)], 1)
        maps.append(F.interpolate(x, size=(16, 24), mode="bilinear", align_corners=False))
    logits = F.conv2d(torch.cat(maps, 1), head.conv_depth.weight, head.conv_depth.bias)
    weights = F.relu(logits) + 0.1
    expected = (weights / weights.sum(1, keepdim=True) * torch.linspace(0.5, 4.0, 8)[None, :, None, None]).sum(1, keepdim=True)
    out = head(feats)
    assert out.shape == (2, 1, 16, 24)
    torch.testing.assert_close(out, expected)
    assert out.min() >= 0.5 and out.max() <= 4.0
    assert sorted(head.state_dict()) == ["conv_depth.bias", "conv_depth.weight"]  # no BatchNorm, as DINOv2's
    with pytest.raises(ValueError, match="built for 4 layers"):
        head(feats[:1])


def test_dpt_head_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    head = DPTDepthHead(16, channels=8, min_depth=1e-3, max_depth=10.0)
    out = head(_features(4))
    assert out.shape == (2, 1, 64, 96)  # a 4 x 6 token grid: finest level x4, the last fusion x2, HeadDepth x2
    assert out.min() >= 1e-3  # regression readout relu(x) + min_depth
    out.mean().backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient (DDP would need find_unused_parameters): {missing}"
    odd = head(_features(4, h=5, w=7))  # odd grids: the stride-2 level rounds up, skips are resized to match
    assert odd.shape[0] == 2 and odd.shape[1] == 1
    assert [p.conv.out_channels for p in head.reassemble_blocks.projects] == [2, 4, 8, 16]


def test_build_head_and_config_errors():
    cfg = DepthConfig.from_dict({"head": "dpt", "dpt_channels": 8, "crop": [28, 42]})
    assert isinstance(make_head(cfg, 16), DPTDepthHead) and cfg.crop == (28, 42)
    assert isinstance(make_head(DepthConfig(head="linear1"), 16), LinearDepthHead)
    with pytest.raises(ValueError, match="unknown depth config keys"):
        DepthConfig.from_dict({"head": "dpt", "lr_typo": 1.0})
    with pytest.raises(ValueError, match="unknown depth head"):
        make_head(DepthConfig(head="conv"), 16)
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        build_head("linear1", 16, min_depth=5.0, max_depth=1.0)


def test_predict_returns_the_frame_size_and_backbone_features_have_no_final_norm():
    vit = build_vit("dinov2_tiny", seed=0).eval()
    head = build_head("linear1", 96, min_depth=1e-3, max_depth=10.0, n_bins=8).eval()
    images = torch.randn(1, 3, 45, 61)
    assert predict(vit, head, images, [5]).shape == (1, 1, 45, 61)
    x = torch.randn(1, 3, 28, 28)
    (patch, cls), = backbone_features(vit, x, [5])
    (want, want_cls), = vit.get_intermediate_layers(x, n=[5], reshape=True, return_class_token=True, norm=False)
    torch.testing.assert_close(patch, want)
    torch.testing.assert_close(cls, want_cls)
    assert patch.shape == (1, 96, 2, 2) and not patch.is_inference()


def test_rotate_zero_is_identity_and_quarter_turn_is_rot90():
    image = torch.rand(3, 8, 8)
    depth = torch.arange(64.0).view(1, 8, 8)
    same_image, same_depth = rotate(image, depth, 0.0)
    torch.testing.assert_close(same_image, image, atol=1e-5, rtol=0)
    assert torch.equal(same_depth, depth)
    _, turned = rotate(image, depth, 90.0)
    assert torch.equal(turned, torch.rot90(depth, 1, dims=(1, 2))) or torch.equal(turned, torch.rot90(depth, -1, dims=(1, 2)))


def test_train_transform_moves_image_and_depth_together():
    """Image red channel and depth both encode the column index; after crop + flip they must still agree."""
    height, width = 120, 160
    columns = np.tile(np.arange(width, dtype=np.float32), (height, 1))
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = columns.astype(np.uint8)
    sample = {"image": image, "depth": columns / 100.0 + 1.0}
    transform = TrainTransform(crop=(84, 112), rotate_degrees=0.0, gamma=(1, 1), brightness=(1, 1), colour=(1, 1),
                               mean=MEAN, std=STD)
    top, bottom, left, right = scaled_box((45, 472, 43, 608), height, width)
    assert (top, bottom, left, right) == (11, 118, 11, 152)
    flipped = 0
    for seed in range(8):
        x, d = transform(sample, np.random.default_rng(seed))
        assert x.shape == (3, 84, 112) and d.shape == (1, 84, 112)
        red = (x[0] * STD[0] + MEAN[0]) * 255
        torch.testing.assert_close(red, (d[0] - 1.0) * 100, atol=1e-3, rtol=0)
        assert left <= red.min() and red.max() < right  # inside the NYU crop
        flipped += int(red[0, 0] > red[0, -1])
    assert 0 < flipped < 8  # both orientations occur


def test_train_transform_pads_frames_smaller_than_the_crop():
    sample = {"image": np.full((48, 64, 3), 128, np.uint8), "depth": np.full((48, 64), 2.0, np.float32)}
    x, d = TrainTransform(crop=(84, 112), mean=MEAN, std=STD)(sample, np.random.default_rng(0))
    assert x.shape == (3, 84, 112) and d.shape == (1, 84, 112)
    assert (d == 0).any() and (d == 2.0).any()  # the padding is invalid depth
