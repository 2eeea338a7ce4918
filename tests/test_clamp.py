import pytest
import torch

from sinder.defects.detect import find_defects, patch_token_grids
from sinder.defects.linearize import singular_defect_directions
from sinder.models.defective import build_defective_tiny, sample_images
from sinder.remedies.clamp import clamp_matrix, clamp_singular_values, is_block_linear


def test_clamped_matrix_keeps_singular_vectors():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, 7, generator=gen) @ torch.diag(torch.linspace(0.1, 3.0, 7))
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    out, info = clamp_matrix(w, 1.5)
    assert out.dtype == w.dtype and out.shape == w.shape
    assert info.n_clamped == int((s > 1.5).sum()) > 0 and info.max_before == pytest.approx(float(s[0]))
    assert float(torch.linalg.svdvals(out.double())[0]) <= 1.5 + 1e-5
    # The same U and V diagonalize the clamped matrix, with min(S, gamma) on the diagonal.
    core = u.T @ out.double() @ vh.T
    assert torch.allclose(core, torch.diag(s.clamp(max=1.5)), atol=1e-5)


def test_matrix_below_gamma_is_returned_unchanged():
    w = torch.randn(5, 5) * 0.01
    out, info = clamp_matrix(w, 1.0)
    assert info.n_clamped == 0 and torch.equal(out, w)


def test_only_block_linear_weights_change():
    model, _ = build_defective_tiny(0)
    state = model.state_dict()
    clamped, report = clamp_singular_values(state, 1.0)
    assert clamped.keys() == state.keys()
    linear = {k for k, v in state.items() if is_block_linear(k, v)}
    assert linear == {f"blocks.{i}.{n}.weight" for i in range(8) for n in ("attn.qkv", "attn.proj", "mlp.w12", "mlp.w3")}
    assert {r.key for r in report} == linear
    for key, tensor in state.items():
        if key in linear:
            assert float(torch.linalg.svdvals(clamped[key].double())[0]) <= 1.0 + 1e-5
        else:
            assert torch.equal(clamped[key], tensor), key
    assert any(r.n_clamped for r in report) and all(r.max_after <= 1.0 for r in report)
    assert not torch.equal(clamped["blocks.1.mlp.w3.weight"], state["blocks.1.mlp.w3.weight"])
    # Chunked and prefixed keys are recognized too; norms and layer scales never are.
    assert is_block_linear("backbone.blocks.0.3.mlp.fc1.weight", torch.zeros(2, 2))
    assert not is_block_linear("blocks.0.norm1.weight", torch.zeros(2))
    assert not is_block_linear("patch_embed.proj.weight", torch.zeros(2, 2))


def test_clamping_reduces_the_defects_of_the_defective_model():
    model, config = build_defective_tiny(0)
    nu = singular_defect_directions(model, method="expectation")
    images = sample_images(4, 224, seed=8)

    def measure(m):
        grids = patch_token_grids(m, images)
        count = sum(int(find_defects(g[j], nu[i]).sum()) for i, g in enumerate(grids) for j in range(4))
        norms = grids[-1].norm(dim=-1).flatten(1)
        return count, float((norms.max(1).values / norms.median(1).values).max())

    before = measure(model)
    state, _ = clamp_singular_values(model, 2.0)
    clamped, _ = build_defective_tiny(0)
    clamped.load_state_dict(state)
    after = measure(clamped)
    assert before[1] > 10 and after[1] < 3, (before, after)
    assert after[0] < 0.2 * before[0], (before, after)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="gamma=0"):
        clamp_singular_values({"blocks.0.attn.qkv.weight": torch.eye(3)}, 0)
    with pytest.raises(ValueError, match="no block linear weights"):
        clamp_singular_values({"head.weight": torch.eye(3)}, 1.0)


def test_clamp_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from benchmarks.cli import main
    from sinder.models.weights import load_backbone

    out = tmp_path / "clamped.safetensors"
    args = ["clamp", "--backbone", "dinov2_tiny_defective", "--gamma", "1.5", "--out", str(out)]
    assert main(args) == 0
    assert "block linear layers had singular values above 1.5" in capsys.readouterr().out
    model = load_backbone("dinov2_tiny_defective", weights=out)
    assert float(torch.linalg.svdvals(model.blocks[1].mlp.w3.weight.detach().double())[0]) <= 1.5 + 1e-5
    assert main(args) == 2  # exists: refused without --force
    assert "pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert main(["clamp", "--backbone", "dinov2_tiny_defective", "--gamma", "1", "--out", str(tmp_path / "x.pth")]) == 2
