
import pytest
import torch

from sinder import neighbor_loss
from sinder.defects.loss import neighbor_targets


def test_official_neighbor_loss_parity(sinder_parity):
    tensors, meta, tokens = sinder_parity
    nu = tensors["nu_5"]  # the defects were planted along the last block's direction
    tokens = tokens.clone().requires_grad_(True)
    loss, mask, target, alpha = neighbor_loss(tokens, nu, mu=meta["mask_thr"], tau=meta["temperature"])
    assert torch.equal(mask, tensors["mask"].bool())
    assert sorted(map(list, mask.nonzero().tolist())) == sorted(meta["defects"])
    assert target.shape == tokens.shape
    assert (target[1:-1, 1:-1] - tensors["target"]).abs().max() <= 1e-5
    assert abs(alpha.item() - tensors["alpha"].item()) <= 1e-5
    assert abs(loss.item() - tensors["loss"].item()) <= 1e-5
    assert abs(loss.item() - meta["loss"]) <= 1e-5
    # The target is a stop-gradient: the gradient reaches the defective tokens only.
    loss.backward()
    touched = tokens.grad.abs().sum(-1) > 0
    assert torch.equal(touched, mask)


def test_loss_against_hand_computation():
    torch.manual_seed(0)
    grid = torch.randn(5, 6, 8)
    nu = torch.zeros(8)
    nu[0] = 1
    grid[2, 3] = nu * 50  # one planted defect
    loss, mask, target, alpha = neighbor_loss(grid, nu, mu=3.0, tau=0.1)
    assert mask.sum() == 1 and mask[2, 3]
    # Independent computation of the target of (2, 3) from Eqs. 6-7.
    window = grid[1:4, 2:5].reshape(9, 8)
    logits = (window / window.norm(dim=-1, keepdim=True) @ nu).abs()
    c = torch.softmax(-logits / 0.1, dim=0)
    g = torch.tensor([1, 2, 1, 2, 4, 2, 1, 2, 1.0]) / 16
    w = c * g / (c * g).sum()
    expected_target = (w[:, None] * window).sum(0)
    assert torch.allclose(target[2, 3], expected_target, atol=1e-5)
    expected_alpha = grid[1:-1, 1:-1].norm(dim=-1).mean()
    assert torch.allclose(alpha, expected_alpha)
    assert torch.allclose(loss, (grid[2, 3] - expected_target).norm() / expected_alpha, atol=1e-6)
    # Paper switches: no alpha, neighbours only.
    loss_paper, *_ = neighbor_loss(grid, nu, mu=3.0, normalize_by_alpha=False, include_center=False)
    w_nc = w.clone()
    w_nc[4] = 0
    w_nc = w_nc / w_nc.sum()
    assert torch.allclose(loss_paper, (grid[2, 3] - (w_nc[:, None] * window).sum(0)).norm(), atol=1e-5)


def test_no_defect_gives_no_loss_and_border_targets_exist():
    grid = torch.ones(4, 4, 3)
    loss, mask, target, _ = neighbor_loss(grid, torch.tensor([1.0, 0, 0]))
    assert loss is None and not mask.any()
    # Border windows use only the neighbours that exist: a constant map is its own target everywhere.
    assert torch.allclose(neighbor_targets(grid, torch.tensor([1.0, 0, 0])), grid)
    with pytest.raises(ValueError, match="kernel"):
        neighbor_targets(grid, torch.tensor([1.0, 0, 0]), kernel=4)
