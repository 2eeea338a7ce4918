"""Depth losses, metrics and the bin readout against independent computations (numpy loops, hand-worked values)."""

import math

import numpy as np
import pytest
import torch

from benchmarks.depth.features import four_blocks, head_blocks
from benchmarks.depth.heads import bin_values, classification_regression
from benchmarks.depth.losses import gradient_loss, sig_loss
from benchmarks.depth.metrics import MetricAverager, eigen_crop_mask, image_metrics, mean_depth_baseline
from benchmarks.depth.train import lr_factor


def _depth_pair(seed=0, shape=(2, 1, 9, 11)):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen) * 12  # some above max_depth=10: invalid
    target[..., 2:4, 3:6] = 0  # no measurement
    pred = torch.rand(shape, generator=gen) * 9 + 0.5
    return pred.double(), target.double()


def test_sig_loss_matches_numpy():
    pred, target = _depth_pair()
    p, t = pred.numpy().ravel(), target.numpy().ravel()
    valid = (t > 0) & (t <= 10)
    g = np.log(p[valid] + 1e-3) - np.log(t[valid] + 1e-3)
    expected = math.sqrt(g.var(ddof=1) + 0.15 * g.mean() ** 2)
    assert sig_loss(pred, target, max_depth=10.0).item() == pytest.approx(expected, rel=1e-12)
    assert sig_loss(pred, target, mean_only=True).item() == pytest.approx(math.sqrt(0.15 * g.mean() ** 2))


def test_sig_loss_is_scale_sensitive_only_through_the_mean_term():
    _, target = _depth_pair(1)
    valid = (target > 0) & (target <= 10)
    scaled = torch.where(valid, target * 2.0, torch.ones_like(target))
    # pred = 2 gt exactly (eps aside): g is nearly constant, so the loss is about sqrt(0.15) * log 2
    assert sig_loss(scaled, target).item() == pytest.approx(math.sqrt(0.15) * math.log(2), rel=2e-3)
    assert sig_loss(target.clamp_min(0.5), torch.zeros_like(target)).item() == 0.0  # no valid pixel


def _gradient_loss_loops(pred, target, strides=(1, 2, 4, 6), max_depth=10.0, eps=1e-3):
    total = 0.0
    for s in strides:
        p, t = pred[:, 0, ::s, ::s], target[:, 0, ::s, ::s]
        valid = (t > 0) & (t <= max_depth)
        count = valid.sum()
        if count == 0:
            continue
        acc = 0.0
        batch, height, width = p.shape
        for b in range(batch):
            for y in range(height):
                for x in range(width):
                    d = math.log(p[b, y, x] + eps) - math.log(t[b, y, x] + eps) if valid[b, y, x] else 0.0
                    if y + 2 < height and valid[b, y, x] and valid[b, y + 2, x]:
                        acc += abs(d - (math.log(p[b, y + 2, x] + eps) - math.log(t[b, y + 2, x] + eps)))
                    if x + 2 < width and valid[b, y, x] and valid[b, y, x + 2]:
                        acc += abs(d - (math.log(p[b, y, x + 2] + eps) - math.log(t[b, y, x + 2] + eps)))
        total += acc / count
    return total


def test_gradient_loss_matches_loops():
    pred, target = _depth_pair(2, shape=(2, 1, 13, 14))
    expected = _gradient_loss_loops(pred.numpy(), target.numpy())
    assert gradient_loss(pred, target).item() == pytest.approx(expected, rel=1e-10)
    assert gradient_loss(pred[:, 0], target[:, 0]).item() == pytest.approx(expected, rel=1e-10)  # (B, H, W)


def test_gradient_loss_ignores_a_constant_log_offset():
    _, target = _depth_pair(3)
    valid = (target > 0) & (target <= 10)
    pred = torch.where(valid, (target + 1e-3) * 3.0 - 1e-3, torch.full_like(target, 7.0))
    assert gradient_loss(pred, target).item() == pytest.approx(0.0, abs=1e-9)


def test_image_metrics_hand_computed():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    pred = torch.tensor([[1.0, 1.0], [5.0, 3.0]])
    m = image_metrics(pred, gt, eigen_crop=False)
    err = np.array([0.0, -math.log(2), math.log(1.25)])
    assert m["delta1"] == pytest.approx(1 / 3)  # ratios 1, 2, 1.25: only 1 is < 1.25
    assert m["delta2"] == pytest.approx(2 / 3) and m["delta3"] == pytest.approx(2 / 3)  # 2 > 1.25^3
    assert m["abs_rel"] == pytest.approx((0 + 1 / 2 + 1 / 4) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 1 / 2 + 1 / 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert m["rmse_log"] == pytest.approx(math.sqrt((err**2).mean()))
    assert m["log10"] == pytest.approx((math.log10(2) + math.log10(1.25)) / 3)
    assert m["silog"] == pytest.approx(100 * math.sqrt((err**2).mean() - err.mean() ** 2))


def test_image_metrics_clamps_predictions_and_reads_the_valid_range():
    gt = torch.tensor([[5.0, 10.0, 12.0, 0.0005, 9.0]])  # 12 m and 0.5 mm are outside (1e-3, 10]
    pred = torch.tensor([[20.0, 0.0, 3.0, 3.0, 0.0]])  # clamped to 10 and 1e-3
    m = image_metrics(pred, gt, eigen_crop=False, include_max=True)
    assert m["rmse"] == pytest.approx(math.sqrt(((10 - 5) ** 2 + (10 - 1e-3) ** 2 + (9 - 1e-3) ** 2) / 3))
    # the toolbox's valid range (1e-3, 10) leaves gt == 10 out
    m = image_metrics(pred, gt, eigen_crop=False)
    assert m["rmse"] == pytest.approx(math.sqrt(((10 - 5) ** 2 + (9 - 1e-3) ** 2) / 2))
    assert image_metrics(pred, torch.zeros_like(gt), eigen_crop=False) is None


def test_metrics_average_over_images_not_pixels():
    averager = MetricAverager()
    averager.add(image_metrics(torch.full((1, 4), 2.0), torch.full((1, 4), 1.0), eigen_crop=False))  # rmse 1
    averager.add(image_metrics(torch.full((1, 1), 4.0), torch.full((1, 1), 1.0), eigen_crop=False))  # rmse 3
    averager.add(None)  # an image without valid pixels is left out
    assert averager.result()["rmse"] == pytest.approx(2.0) and averager.skipped == 1


def test_eigen_crop_mask_scales_with_the_frame():
    full = eigen_crop_mask(480, 640)
    assert full.sum() == (471 - 45) * (601 - 41) and full[45, 41] and not full[44, 41] and not full[45, 601]
    small = eigen_crop_mask(120, 160)
    rows, cols = small.any(1).nonzero().ravel(), small.any(0).nonzero().ravel()
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (11, 118, 10, 150)


def test_mean_depth_baseline():
    train = [np.array([[1.0, 3.0], [0.0, 11.0]])]  # valid: 1, 3 -> mean 2
    base = mean_depth_baseline(train, [torch.full((48, 64), 4.0)])
    assert base["mean_depth"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no test image"):  # no valid test pixel anywhere
        mean_depth_baseline(train, [torch.zeros(48, 64)])
    big = [torch.full((48, 64), 5.0)]
    assert mean_depth_baseline(train, big)["rmse"] == pytest.approx(3.0)


def test_classification_regression_readout():
    bins = bin_values(4, 1.0, 4.0)
    assert torch.equal(bins, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    logits = torch.tensor([-1.0, 0.9, 2.0, -5.0]).view(1, 4, 1, 1)
    weights = np.array([0.1, 1.0, 2.1, 0.1])
    expected = float((weights / weights.sum()) @ np.array([1.0, 2.0, 3.0, 4.0]))
    assert classification_regression(logits, bins).item() == pytest.approx(expected)
    flat = classification_regression(torch.zeros(2, 256, 3, 3), bin_values(256, 1e-3, 10.0))
    torch.testing.assert_close(flat, torch.full((2, 1, 3, 3), (1e-3 + 10.0) / 2))


def test_block_choice():
    assert four_blocks(40) == [9, 19, 29, 39] and four_blocks(24) == [4, 11, 17, 23]
    assert four_blocks(12) == [2, 5, 8, 11] and four_blocks(8) == [1, 3, 5, 7] and four_blocks(6) == [0, 2, 3, 5]
    assert head_blocks("linear1", 40) == [39] and head_blocks("dpt", 8) == [1, 3, 5, 7]
    with pytest.raises(ValueError, match="at least 4 blocks"):
        four_blocks(3)
    with pytest.raises(ValueError, match="unknown depth head"):
        head_blocks("linear2", 12)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1) and lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0) and lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
