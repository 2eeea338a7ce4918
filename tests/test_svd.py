import pytest
import torch
from torch import nn

from sinder.models.vit import build_vit
from sinder.repair.svd import SVDLinear, fold_back, parametrize_singular_values, singular_value_changes


def test_svd_linear_reproduces_weight_and_output():
    torch.manual_seed(0)
    linear = nn.Linear(12, 36)
    svd = SVDLinear(linear, parts=3)
    assert torch.allclose(svd.folded_weight(), linear.weight, atol=1e-6)
    x = torch.randn(4, 12)
    assert torch.allclose(svd(x), linear(x), atol=1e-5)
    # Each part has its own SVD: U_j diag(S_j) V_j^T equals the j-th row block.
    for j, (u, s, vt, _) in enumerate(svd.factors()):
        block = linear.weight[12 * j : 12 * (j + 1)]
        assert torch.allclose((u * s) @ vt, block, atol=1e-6)
        assert torch.allclose(s, torch.linalg.svdvals(block), atol=1e-6)


def test_delta_changes_only_singular_values():
    torch.manual_seed(1)
    linear = nn.Linear(8, 8)
    svd = SVDLinear(linear)
    with torch.no_grad():
        svd.delta0.copy_(torch.linspace(-0.1, 0.1, 8))
    new = svd.to_linear()
    expected = torch.linalg.svdvals(linear.weight.double()).float() + torch.linspace(-0.1, 0.1, 8)
    assert torch.allclose(torch.linalg.svdvals(new.weight), expected.sort(descending=True).values, atol=1e-5)
    assert torch.equal(new.bias, linear.bias)


@pytest.mark.parametrize("trainable,expect_qk,expect_bias", [
    ("singular_values_except_qk", False, False),
    ("singular_values", True, False),
    ("singular_values_and_biases", True, True),
])
def test_parametrize_freezes_the_right_things(trainable, expect_qk, expect_bias):
    model = build_vit("dinov2_tiny_swiglu", seed=0)
    names = parametrize_singular_values(model, trainable)
    assert "blocks.0.attn.qkv.delta2" in names  # v always trains
    assert ("blocks.0.attn.qkv.delta0" in names) == expect_qk
    assert ("blocks.0.attn.qkv.delta1" in names) == expect_qk
    assert ("blocks.3.mlp.w12.bias" in names) == expect_bias
    assert all(n.startswith("blocks.") for n in names)
    assert not any(n.endswith((".U0", ".S0", ".Vt0")) for n in names)
    # 6 blocks x (qkv, proj, w12, w3) linears.
    assert sum(n.endswith(".delta0") for n in names) == (24 if expect_qk else 18)
    assert model.pos_embed.requires_grad is False and model.norm.weight.requires_grad is False


def test_fold_back_keeps_keys_and_outputs():
    model = build_vit("dinov2_tiny", seed=0)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        before = model(x)
        parametrize_singular_values(model)
        during = model(x)
        changes = singular_value_changes(model)
        fold_back(model)
        after = model(x)
    assert list(model.state_dict()) == list(reference)
    assert all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)  # exact, not just close
    assert torch.allclose(before, during, atol=1e-4) and torch.allclose(before, after, atol=1e-4)
    assert set(changes) >= {"blocks.0.attn.qkv.q", "blocks.0.attn.qkv.v", "blocks.5.mlp.fc2"}
    assert all(float(v.abs().max()) == 0 for v in changes.values())
    with pytest.raises(ValueError, match="trainable"):
        parametrize_singular_values(build_vit("dinov2_tiny", seed=0), "everything")
