"""Against the real libraries, where installed (optional: neither is a dependency of this package).

transformers' ``Dinov2Model``/``Dinov2WithRegistersModel`` and timm's DINOv2 ViTs, small and random: their
checkpoints load into our ViT with identical outputs at the native and at other input sizes, and what we write
back in their format loads into them. ``test_checkpoint_formats.py`` covers the same without the libraries.
"""

import pytest
import torch

from sinder.models.formats import official_to_timm, save_checkpoint
from sinder.models.weights import load_backbone

SHAPES = [(2, 3, 56, 56), (1, 3, 42, 70)]


def _randomize(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            small = param.ndim == 1 or "token" in name or "pos" in name or "position" in name
            param.copy_(torch.randn(param.shape, generator=gen) * (0.3 if small else 0.05))
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "layernorm.weight")):
                param.add_(1.0)


def _tokens(model, x):
    with torch.no_grad():
        out = model.forward_features(x)
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1)


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2",
                                  "vit_giant_patch14_dinov2", "vit_giant_patch14_reg4_dinov2"])  # fmt: skip
def test_timm_dinov2(name, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    narrow = {} if "small" in name else {"embed_dim": 384, "num_heads": 6}  # giant's SwiGLU at ViT-S width
    ref = timm.create_model(name, pretrained=False, img_size=56, depth=2, num_classes=0, dynamic_img_size=True,
                            **narrow).eval()  # fmt: skip
    _randomize(ref)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    model = load_backbone(path)
    for shape in SHAPES:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.allclose(_tokens(model, x), ref.forward_features(x), atol=1e-5, rtol=0), shape
    # Our official -> timm map is what timm's own checkpoint filter makes of an official state dict.
    official = model.state_dict()
    theirs = checkpoint_filter_fn({k: v.clone() for k, v in official.items()}, ref)
    ours = official_to_timm(official)
    assert sorted(theirs) == sorted(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
    ref.load_state_dict(ours, strict=True)


@pytest.mark.parametrize("registers", [False, True])
@pytest.mark.parametrize("swiglu", [False, True])
def test_transformers_dinov2(registers, swiglu, tmp_path):
    transformers = pytest.importorskip("transformers")

    kind = "Dinov2WithRegisters" if registers else "Dinov2"
    config = getattr(transformers, f"{kind}Config")(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                     image_size=56, patch_size=14, layerscale_value=0.5,
                                                     use_swiglu_ffn=swiglu)  # fmt: skip
    cls = getattr(transformers, f"{kind}Model")
    ref = cls(config).eval()
    _randomize(ref)
    ref.save_pretrained(tmp_path / "source")
    model = load_backbone(tmp_path / "source")
    for shape in SHAPES:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = ref(pixel_values=x).last_hidden_state
        assert torch.allclose(_tokens(model, x), expected, atol=1e-5, rtol=0), shape
    save_checkpoint(model.state_dict(), tmp_path / "again", "hf", config=model.config, source=model.checkpoint_format)
    again = cls.from_pretrained(tmp_path / "again").eval()
    x = torch.randn(SHAPES[1], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(again(pixel_values=x).last_hidden_state, ref(pixel_values=x).last_hidden_state)
