import pytest
import torch
from conftest import load_parity_model
from naive_dinov2 import forward_all_blocks, layer_norm

from sinder.models.vit import PRESETS, build_vit, resolve_config
from sinder.models.weights import load_state_dict_strict

TOL = 1e-5


@pytest.mark.parametrize("fixture", ["dinov2_tiny_mlp", "dinov2_tiny_swiglu"])
def test_reference_parity(fixture):
    arch, state, ref = load_parity_model(fixture)
    model = build_vit(arch)
    model.load_state_dict(state, strict=True)
    x = ref["input"]
    with torch.no_grad():
        feats = model.forward_features(x)
        for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
            assert feats[key].shape == ref[key].shape
            assert (feats[key] - ref[key]).abs().max() <= TOL, key
        assert feats["x_norm_regtokens"].numel() == 0
        for norm in (0, 1):
            outs = model.get_intermediate_layers(x, n=4, reshape=True, return_class_token=True, norm=bool(norm))
            assert len(outs) == 4
            for i, (patch, cls) in enumerate(outs):
                assert (patch - ref[f"intermediate_norm{norm}_{i}_patch"]).abs().max() <= TOL
                assert (cls - ref[f"intermediate_norm{norm}_{i}_cls"]).abs().max() <= TOL


def _random_like_release(preset, seed):
    """A tiny model with every parameter random (incl. norms and layer scales), as a trained file would be."""
    model = build_vit(preset, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or name in {"cls_token", "register_tokens"}:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


CASES = [
    # (preset, input size): SwiGLU at the native 518 px, registers (antialias, no offset) at odd sizes.
    ("dinov2_tiny_swiglu", (518, 518)),
    ("dinov2_tiny_reg", (56, 84)),
    ("dinov2_tiny_reg", (98, 42)),
    ("dinov2_tiny", (518, 518)),
    ("dinov2_tiny", (70, 126)),
]


@pytest.mark.parametrize("preset,size", CASES)
def test_matches_independent_reference(preset, size):
    model = _random_like_release(preset, seed=3)
    arch = model.config
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    sd = model.state_dict()
    blocks = forward_all_blocks(sd, x, arch)
    regs = arch["num_register_tokens"]
    with torch.no_grad():
        feats = model.forward_features(x)
        final = layer_norm(blocks[-1], sd["norm.weight"].double(), sd["norm.bias"].double())
        assert (feats["x_prenorm"].double() - blocks[-1]).abs().max() <= TOL
        assert (feats["x_norm_clstoken"].double() - final[:, 0]).abs().max() <= TOL
        assert feats["x_norm_regtokens"].shape == (2, regs, arch["embed_dim"])
        if regs:
            assert (feats["x_norm_regtokens"].double() - final[:, 1 : 1 + regs]).abs().max() <= TOL
        assert (feats["x_norm_patchtokens"].double() - final[:, 1 + regs :]).abs().max() <= TOL
        # A list of block indices, given out of order, comes back in block order like the reference.
        outs = model.get_intermediate_layers(x, n=[4, 1], reshape=True, return_class_token=True, norm=False)
        rows, cols = size[0] // 14, size[1] // 14
        for (patch, cls), idx in zip(outs, [1, 4]):
            assert patch.shape == (2, arch["embed_dim"], rows, cols)
            expected = blocks[idx][:, 1 + regs :].reshape(2, rows, cols, -1).permute(0, 3, 1, 2)
            assert (patch.double() - expected).abs().max() <= TOL
            assert (cls.double() - blocks[idx][:, 0]).abs().max() <= TOL


def test_intermediate_layers_argument_errors():
    model = build_vit("dinov2_tiny", seed=0)
    x = torch.zeros(1, 3, 28, 28)
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(x, n=[0, 6])
    with pytest.raises(ValueError, match="has 6 blocks"):
        model.get_intermediate_layers(x, n=7)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.forward_features(torch.zeros(1, 3, 30, 28))


@pytest.mark.parametrize(
    "preset,dim,depth,heads,regs,mlp_keys",
    [
        ("dinov2_vits14", 384, 12, 6, 0, {"mlp.fc1.weight": (1536, 384), "mlp.fc2.weight": (384, 1536)}),
        ("dinov2_vitb14_reg", 768, 12, 12, 4, {"mlp.fc1.weight": (3072, 768)}),
        ("dinov2_vitl14", 1024, 24, 16, 0, {"mlp.fc2.weight": (1024, 4096)}),
        ("dinov2_vitg14", 1536, 40, 24, 0, {"mlp.w12.weight": (8192, 1536), "mlp.w3.weight": (1536, 4096)}),
        ("dinov2_vitg14_reg", 1536, 40, 24, 4, {"mlp.w12.bias": (8192,)}),
    ],
)
def test_official_presets_have_release_shapes(preset, dim, depth, heads, regs, mlp_keys):
    with torch.device("meta"):
        model = build_vit(preset)
    sd = model.state_dict()
    assert model.config["num_heads"] == heads and len(model.blocks) == depth
    assert sd["pos_embed"].shape == (1, 37 * 37 + 1, dim)  # trained at 518 px
    assert sd["blocks.0.ls1.gamma"].shape == (dim,)
    assert ("register_tokens" in sd) == bool(regs)
    if regs:
        assert sd["register_tokens"].shape == (1, regs, dim)
        assert model.config["interpolate_offset"] == 0.0 and model.config["interpolate_antialias"]
    else:
        assert model.config["interpolate_offset"] == 0.1 and not model.config["interpolate_antialias"]
    for key, shape in mlp_keys.items():
        assert sd[f"blocks.{depth - 1}.{key}"].shape == shape
    assert f"blocks.{depth}.norm1.weight" not in sd


def test_config_from_file_and_errors(tmp_path):
    cfg_file = tmp_path / "arch.yaml"
    cfg_file.write_text("embed_dim: 48\ndepth: 2\nnum_heads: 3\nffn_layer: swiglu\nblock_chunks: 0\n")
    model = build_vit(cfg_file, seed=1)
    assert model.embed_dim == 48 and len(model.blocks) == 2
    assert model.blocks[0].mlp.w12.weight.shape == (2 * 128, 48)
    json_file = tmp_path / "arch.json"
    json_file.write_text('{"embed_dim": 48, "depth": 1, "num_heads": 2, "num_register_tokens": 2}')
    assert build_vit(json_file).register_tokens.shape == (1, 2, 48)
    with pytest.raises(ValueError, match="embed_dimm"):
        resolve_config({"embed_dimm": 3})
    with pytest.raises(ValueError, match="not a preset"):
        resolve_config("dinov2_vitx14")
    with pytest.raises(ValueError, match="ffn_layer"):
        resolve_config({"ffn_layer": "relu"})
    # Same seed, same weights; the presets dict is not mutated by building.
    assert torch.equal(build_vit("dinov2_tiny", seed=5).pos_embed, build_vit("dinov2_tiny", seed=5).pos_embed)
    assert PRESETS["dinov2_tiny"]["embed_dim"] == 96


def test_load_parity_weights_through_strict_loader():
    arch, state, ref = load_parity_model("dinov2_tiny_swiglu")
    model = build_vit(arch)
    load_state_dict_strict(model, {f"model.{k}": v for k, v in state.items()}, source="fixture")
    with torch.no_grad():
        out = model(ref["input"])
    assert (out - ref["x_norm_clstoken"]).abs().max() <= TOL
