import pytest
import torch
from conftest import load_parity_model, parity_path
from safetensors.torch import load_file

from sinder.defects import linearize as lin
from sinder.models.vit import build_vit


def parity_model(name="dinov2_tiny_swiglu"):
    arch, state, _ = load_parity_model(name)
    model = build_vit(arch)
    model.load_state_dict(state)
    return model, state


def abs_cos(a, b):
    return float((a.double() @ b.double()).abs() / (a.double().norm() * b.double().norm()))


@pytest.mark.parametrize("method", ["sampled", "expectation"])
def test_directions_match_official_code(method):
    model, _ = parity_model()
    ref = load_file(str(parity_path("sinder_tiny_swiglu.safetensors")))
    nu = lin.singular_defect_directions(model, n_samples=100_000, seed=0, method=method)
    assert len(nu) == 6
    for i, v in enumerate(nu):
        assert v.dtype == torch.float32 and v.shape == (96,)
        assert abs(float(v.norm()) - 1) < 1e-5
        assert abs_cos(v, ref[f"nu_{i}"]) >= 0.98, f"block {i}"


def test_state_dict_gives_the_same_directions_as_the_model():
    model, state = parity_model()
    from_model = lin.singular_defect_directions(model, n_samples=2000, seed=3)
    from_state = lin.singular_defect_directions({f"model.{k}": v for k, v in state.items()}, n_samples=2000, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(from_model, from_state))


def standardized(dim, seed):
    x = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean()
    return x / x.pow(2).mean().sqrt()  # LayerNorm's division is by 1: the linearization is exact


@pytest.mark.parametrize("name", ["dinov2_tiny_swiglu", "dinov2_tiny_mlp"])
def test_attention_affine_map_equals_single_token_attention(name):
    model, _ = parity_model(name)
    block = model.blocks[2]
    bw = lin.block_weights(model)[2]
    a, b = lin.attention_linear(bw, with_bias=True)
    x = standardized(96, 0)
    with torch.no_grad():
        ref = block.ls1(block.attn(block.norm1(x.float()[None, None])))[0, 0].double()
    assert torch.allclose(a @ x + b, ref, atol=1e-4)
    # Without the bias the map is the centred linear part: constants are projected out.
    assert torch.allclose(
        lin.attention_linear(bw) @ torch.ones(96, dtype=torch.float64), torch.zeros(96, dtype=torch.float64), atol=1e-9
    )


class CentreScale(torch.nn.Module):
    """LayerNorm without the division by the standard deviation: what the linearization keeps of it."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        return (x - x.mean(dim=-1, keepdim=True)) * self.norm.weight + self.norm.bias


class LinearMlp(torch.nn.Module):
    def __init__(self, fit, w_out, b_out):
        super().__init__()
        self.fit, self.w_out, self.b_out = fit.float(), w_out, b_out

    def forward(self, x):
        return torch.nn.functional.linear(x @ self.fit.T, self.w_out, self.b_out)


@pytest.mark.parametrize("name", ["dinov2_tiny_swiglu", "dinov2_tiny_mlp"])
def test_block_affine_is_the_block_with_its_linearized_parts(name):
    # Eq. 3: Layer(x) ~ E x + f. Run the real block on one token with the LayerNorms' division and the MLP's
    # nonlinearity replaced by what the linearization keeps: the output must be E x + f.
    model, _ = parity_model(name)
    block = model.blocks[4]
    bw = lin.block_weights(model)[4]
    fit = lin.mlp_least_squares(bw, n_samples=2000, seed=0)
    e, f = lin.block_affine(bw, fit)
    block.norm1, block.norm2 = CentreScale(block.norm1), CentreScale(block.norm2)
    w_out = block.mlp.w3 if hasattr(block.mlp, "w3") else block.mlp.fc2
    block.mlp = LinearMlp(fit, w_out.weight, w_out.bias)
    x = torch.randn(96, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        ref = block(x.float()[None, None])[0, 0].double()
    assert torch.allclose(e @ x + f, ref, atol=1e-4, rtol=1e-4)
    eye = torch.eye(96, dtype=torch.float64)
    assert torch.allclose(e, (eye + lin.mlp_linear(bw, fit)) @ (eye + lin.attention_linear(bw)))


def test_least_squares_equals_lstsq_on_the_same_samples():
    model, _ = parity_model()
    bw = lin.block_weights(model)[0]
    ours = lin.mlp_least_squares(bw, n_samples=3000, seed=7, chunk_size=512)
    gen = torch.Generator().manual_seed(7)
    x = torch.cat([torch.randn(512 if s + 512 <= 3000 else 3000 - s, 96, generator=gen) for s in range(0, 3000, 512)])
    ref = torch.linalg.lstsq(x.double(), lin.mlp_hidden(bw, x).double()).solution.T
    assert torch.allclose(ours, ref, atol=1e-8)


@pytest.mark.parametrize("name", ["dinov2_tiny_swiglu", "dinov2_tiny_mlp"])
def test_expectation_is_the_large_sample_limit(name):
    model, _ = parity_model(name)
    bw = lin.block_weights(model)[3]
    # Scale the input weights up so that the activations are far from linear on N(0, I) inputs.
    bw = lin.BlockWeights(**{**bw.__dict__, "mlp_in_weight": bw.mlp_in_weight * 8, "mlp_in_bias": bw.mlp_in_bias + 0.3})
    exact = lin.mlp_expected_linear(bw)
    sampled = lin.mlp_least_squares(bw, n_samples=200_000, seed=1)
    rel = float((exact - sampled).norm() / exact.norm())
    assert rel < 0.05, rel
    fewer = lin.mlp_least_squares(bw, n_samples=20_000, seed=2)
    # Sampling error shrinks like 1/sqrt(n): 10x the samples, about a third of the error.
    assert rel < 0.6 * float((exact - fewer).norm() / exact.norm())


def test_directions_are_leading_singular_vectors_of_the_products():
    model, _ = parity_model("dinov2_tiny_mlp")
    blocks = lin.block_weights(model)[:3]
    result = lin.compute_directions(blocks, n_samples=3000, seed=5)
    eye = torch.eye(96, dtype=torch.float64)
    g = eye
    for i, bw in enumerate(blocks):
        fit = lin.mlp_least_squares(bw, 3000, lin.block_seed(5, i))
        a = eye + lin.attention_linear(bw)
        c = eye + lin.mlp_linear(bw, fit)
        e = c @ a
        g = e @ g
        for kind, mat in (("attention", a), ("mlp", c), ("block", e), ("cumulative", g)):
            u, s, _ = torch.linalg.svd(mat)
            assert abs_cos(result.directions[kind][i], u[:, 0]) > 1 - 1e-6, (kind, i)
            if kind != "cumulative":
                assert float(result.sigma[kind][i]) == pytest.approx(float(s[0]), rel=1e-9)
        assert float(result.sigma["cumulative"][i]) == pytest.approx(float(torch.log(s[0])), rel=1e-9)
        assert result.directions["cumulative"][i][result.directions["cumulative"][i].abs().argmax()] > 0


def test_cache_roundtrip_and_key(tmp_path, monkeypatch):
    model, _ = parity_model()
    first = lin.linearized_directions(model, n_samples=1000, seed=0, kinds=("cumulative",), cache_dir=tmp_path)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary files left behind

    def fail(*args, **kwargs):
        raise AssertionError("recomputed despite a cache hit")

    monkeypatch.setattr(lin, "compute_directions", fail)
    again = lin.linearized_directions(model, n_samples=1000, seed=0, kinds=("cumulative",), cache_dir=tmp_path)
    assert torch.equal(again.directions["cumulative"], first.directions["cumulative"])
    assert again.fingerprint == first.fingerprint
    with pytest.raises(AssertionError, match="recomputed"):  # another seed is another key
        lin.linearized_directions(model, n_samples=1000, seed=1, cache_dir=tmp_path)
    monkeypatch.undo()
    # Asking for more kinds recomputes and keeps the union in the cache.
    more = lin.linearized_directions(model, n_samples=1000, seed=0, kinds=("block",), cache_dir=tmp_path)
    assert set(more.directions) == {"block", "cumulative"}
    assert torch.equal(more.directions["cumulative"], first.directions["cumulative"])
    # Changing a weight changes the key.
    with torch.no_grad():
        model.blocks[0].ls2.gamma.mul_(2)
    changed = lin.linearized_directions(model, n_samples=1000, seed=0, kinds=("cumulative",), cache_dir=tmp_path)
    assert changed.fingerprint != first.fingerprint
    assert len(list(tmp_path.iterdir())) == 2


def test_bad_arguments_are_named():
    model, _ = parity_model()
    with pytest.raises(ValueError, match="n_samples=50 is below the width 96"):
        lin.singular_defect_directions(model, n_samples=50)
    with pytest.raises(ValueError, match="unknown linearization method 'exact'"):
        lin.singular_defect_directions(model, method="exact")
    with pytest.raises(ValueError, match=r"unknown direction kinds \['qk'\]"):
        lin.linearized_directions(model, n_samples=1000, kinds=("qk",))
    with pytest.raises(KeyError, match="no blocks"):
        lin.singular_defect_directions({"norm.weight": torch.ones(3)})
