"""The depth protocol's switches (reference vs our reading) each change what they claim: the gradient loss on a
batch, a gamma-augmented pixel, the prediction-to-GT resize and the valid ground truth at test."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.core.padding import center_pad
from benchmarks.depth.heads import build_head
from benchmarks.depth.losses import gradient_loss, gradient_loss_reference
from benchmarks.depth.metrics import image_metrics
from benchmarks.depth.train import DepthConfig, depth_loss, predict
from benchmarks.depth.transforms import TrainTransform, colour_augment
from sinder.models.vit import build_vit


def _batch(batch, seed=0, h=7, w=9):
    gen = torch.Generator().manual_seed(seed)
    target = (torch.rand(batch, 1, h, w, generator=gen) * 12).double()  # some above 10: invalid
    pred = (torch.rand(batch, 1, h, w, generator=gen) * 9 + 0.5).double()
    return pred, target


def _reference_loops(pred, target, max_depth=10.0, eps=1e-3):
    """DINOv2's loss written out: scales x[::s, ::s] on (B, 1, H, W), differences between images b and b + 2."""
    total = 0.0
    for s in (1, 2, 4, 6):
        p, t = pred[::s, ::s].numpy(), target[::s, ::s].numpy()
        valid = (t > 0) & (t <= max_depth)
        d = np.where(valid, np.log(p + eps) - np.log(t + eps), 0.0)
        acc = 0.0
        for b in range(p.shape[0] - 2):
            both = valid[b] & valid[b + 2]
            acc += float(np.abs(d[b] - d[b + 2])[both].sum())
        total += acc / valid.sum()
    return total


def test_reference_gradient_loss_differences_images_and_vanishes_at_two():
    pred, target = _batch(5)
    assert gradient_loss_reference(pred, target).item() == pytest.approx(_reference_loops(pred, target), rel=1e-10)
    two_p, two_t = pred[:2], target[:2]
    assert gradient_loss_reference(two_p, two_t).item() == 0.0  # DINOv2's 2 images per GPU: no signal
    assert gradient_loss(two_p, two_t).item() > 0.1  # the per-image (spatial) reading has one
    # the switch reaches the training loss: same batch, different totals by exactly 0.5 x the difference
    ref = depth_loss(pred, target, DepthConfig(gradient_loss="reference"), step=0)
    spatial = depth_loss(pred, target, DepthConfig(gradient_loss="spatial"), step=0)
    want = 0.5 * (gradient_loss_reference(pred, target) - gradient_loss(pred, target))
    assert (ref - spatial).item() == pytest.approx(want.item(), rel=1e-10)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        gradient_loss_reference(pred[:, 0], target[:, 0])


def test_colour_augmentation_applies_gamma_on_the_255_scale():
    image = torch.tensor([0.5, 0.9, 0.1]).view(3, 1, 1)
    ref = colour_augment(image, 1.1, 1.0, [1.0, 1.0, 1.0], 255.0).flatten().tolist()
    unit = colour_augment(image, 1.1, 1.0, [1.0, 1.0, 1.0], 1.0).flatten().tolist()
    assert ref[0] == pytest.approx(127.5**1.1 / 255, rel=1e-5)  # 207 / 255: much brighter
    assert ref[1] == 1.0  # 229.5 ** 1.1 > 255: clipped
    assert unit[0] == pytest.approx(0.5**1.1, rel=1e-5) and unit[1] == pytest.approx(0.9**1.1, rel=1e-5)
    # the transform uses the switch: same draws, a pure gamma, different pixels
    sample = {"image": np.full((48, 64, 3), 128, np.uint8), "depth": np.full((48, 64), 2.0, np.float32)}
    outs = {}
    for mode in ("reference", "unit"):
        t = TrainTransform(crop=(28, 42), rotate_degrees=0.0, gamma=(1.1, 1.1), brightness=(1, 1), colour=(1, 1),
                           colour_aug=mode, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
        outs[mode] = [t(sample, np.random.default_rng(seed))[0][0, 5, 5].item() for seed in range(6)]
    changed = [abs(a - b) > 1e-3 for a, b in zip(outs["reference"], outs["unit"])]
    assert any(changed)  # the seeds where the colour branch fired
    with pytest.raises(ValueError, match="colour_aug"):
        TrainTransform(colour_aug="linear", mean=(0.5,) * 3, std=(0.25,) * 3)


def test_eval_resize_reference_resizes_the_padded_map_and_clamps():
    vit = build_vit("dinov2_tiny", seed=0).eval()
    torch.manual_seed(0)
    head = build_head("linear1", 96, min_depth=1e-3, max_depth=10.0, n_bins=8).eval()
    with torch.no_grad():
        head.conv_depth.bias[-1] = 50.0  # push some pixels to the far bin so the clamp is not vacuous
    images = torch.randn(1, 3, 45, 61)  # padded to 56 x 70
    padded, (top, bottom, left, right) = center_pad(images, 14)
    from benchmarks.depth.features import backbone_features

    raw = head(backbone_features(vit, padded, [5]))
    want_ref = F.interpolate(raw.clamp(1e-3, 10.0), size=(45, 61), mode="bilinear", align_corners=False)
    full = F.interpolate(raw, size=(56, 70), mode="bilinear", align_corners=False)
    want_unpad = full[..., top : 56 - bottom, left : 70 - right]
    torch.testing.assert_close(predict(vit, head, images, [5], "reference"), want_ref)
    torch.testing.assert_close(predict(vit, head, images, [5], "unpad"), want_unpad)
    assert not torch.allclose(want_ref, want_unpad)


def test_valid_ground_truth_at_test_excludes_max_depth_in_the_reference():
    gt = torch.tensor([[1.0, 10.0]])
    pred = torch.tensor([[1.0, 5.0]])
    assert image_metrics(pred, gt, eigen_crop=False)["rmse"] == 0.0  # gt == 10 is not < 10
    assert image_metrics(pred, gt, eigen_crop=False, include_max=True)["rmse"] == pytest.approx(math.sqrt(12.5))


def test_depth_config_switches_are_checked_and_listed_as_deviations():
    assert DepthConfig().deviations() == []
    cfg = DepthConfig.from_dict({"gradient_loss": "spatial", "eval_resize": "unpad"})
    assert cfg.deviations() == ["gradient_loss=spatial", "eval_resize=unpad"]
    with pytest.raises(ValueError, match="gradient_loss='batch'.*reference, spatial"):
        DepthConfig.from_dict({"gradient_loss": "batch"})
