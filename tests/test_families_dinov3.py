"""DINOv3 (transformers ``DINOv3ViTModel``) loaded into our ViT: per-block parity with transformers itself.

A random small ``DINOv3ViTModel`` (class token + 2 registers, LayerScale, RoPE; plain GELU MLP or gated SwiGLU MLP)
is saved with ``save_pretrained`` and loaded with ``sinder.load_backbone``; every block's patch tokens must match
transformers' ``hidden_states`` (``hidden_states[0]`` is the embeddings, ``[i + 1]`` block i; the first
1 + registers tokens are the class and register tokens), at the native size and at other multiples of the patch.
"""

from __future__ import annotations

import pytest
import torch
from parity import assert_blocks_match, assert_tower_matches

import sinder
from sinder.models.backbone import describe
from sinder.models.vit import Rope2D, build_vit

transformers = pytest.importorskip("transformers")

REGISTERS = 2


def _random_dinov3(tmp_path_factory, gated: bool):
    torch.manual_seed(0)
    config = transformers.DINOv3ViTConfig(
        hidden_size=64,
        intermediate_size=96 if gated else 128,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_register_tokens=REGISTERS,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
        layerscale_value=0.5,
    )
    model = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():  # non-trivial norms, biases and layer scales so that a mapping mistake shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "lambda" in name or "token" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("dinov3_gated" if gated else "dinov3")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module", params=[False, True], ids=["mlp", "swiglu"])
def dinov3_folder(request, tmp_path_factory):
    return _random_dinov3(tmp_path_factory, request.param)


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (48, 16)])
def test_dinov3_per_block_parity_with_transformers(dinov3_folder, size):
    folder, reference = dinov3_folder
    ours = sinder.load_backbone(str(folder))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = reference(pixel_values=x, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert_tower_matches(ours, x, out, prefix=1 + REGISTERS)


def test_dinov3_description(dinov3_folder):
    ours = sinder.load_backbone(str(dinov3_folder[0]))
    d = describe(ours)
    assert (d.family, d.num_prefix_tokens, d.num_register_tokens, d.patch_size, d.pooling) == (
        "dinov3",
        1 + REGISTERS,
        REGISTERS,
        8,
        "cls",
    )
    assert ours.pos_embed is None and ours.rope is not None  # RoPE instead of position embeddings
    # the key projection has no bias in DINOv3: its third of the fused bias is zero
    k_bias = ours.blocks[0].attn.qkv.bias.chunk(3)[1]
    assert torch.equal(k_bias, torch.zeros_like(k_bias))


def test_rope_leaves_the_values_and_the_prefix_tokens_alone():
    rope = Rope2D(head_dim=8, theta=100.0)
    rope.grid = (2, 3)
    x = torch.randn(1, 2, 1 + 6, 8)
    rotated = rope(x)
    assert torch.equal(rotated[:, :, :1], x[:, :, :1])  # the class token is not rotated
    # a rotation per pair of channels (i, i + head_dim/2): norms of those pairs are kept
    pairs = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    assert torch.allclose(pairs(rotated), pairs(x), atol=1e-6)
    # independent restatement of the angles: patch (r, c) centre in [-1, 1], frequencies 100 ** -(4 i / 8)
    freqs = 100.0 ** -(torch.arange(2) * 4 / 8)
    r, c = 1, 2  # the last patch
    y, xc = 2 * (r + 0.5) / 2 - 1, 2 * (c + 0.5) / 3 - 1
    angles = torch.cat([2 * torch.pi * y * freqs, 2 * torch.pi * xc * freqs])
    cos, sin = rope.cos_sin(torch.device("cpu"), torch.float32)
    assert torch.allclose(cos[-1], torch.cat([angles.cos()] * 2), atol=1e-6)
    assert torch.allclose(sin[-1], torch.cat([angles.sin()] * 2), atol=1e-6)


def test_rope_needs_the_grid_of_the_input():
    model = build_vit({"embed_dim": 64, "depth": 1, "num_heads": 4, "patch_size": 8, "img_size": 32,
                       "pos_embed": False, "rope": True, "family": "dinov3"}, seed=0)  # fmt: skip
    with pytest.raises(RuntimeError, match="no token grid set; run prepare_tokens_with_masks"):
        model.blocks[0](torch.zeros(1, 17, 64))
    assert model.get_intermediate_layers(torch.zeros(1, 3, 16, 24), n=1)[0].shape == (1, 6, 64)


def test_an_unsupported_dinov3_activation_names_the_supported_one():
    from sinder.models.formats import CheckpointError, config_from_hf

    with pytest.raises(
        CheckpointError,
        match=r"hidden_act 'gelu' is not supported for DINOv3; supported: 'silu' "
        r"with use_gated_mlp",
    ):
        config_from_hf({"model_type": "dinov3_vit", "use_gated_mlp": True, "hidden_act": "gelu"}, "x")


def _as_timm_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers DINOv3 keys written out in timm's ``Eva`` keys by hand (timm 1.0 eva.py: ``gamma_1``,
    ``attn.qkv`` without bias + ``q_bias``/``v_bias``, ``mlp.fc1_g``/``fc1_x``/``fc2`` for SwiGLU)."""
    out = {"cls_token": state["embeddings.cls_token"], "reg_token": state["embeddings.register_tokens"],
           "patch_embed.proj.weight": state["embeddings.patch_embeddings.weight"],
           "patch_embed.proj.bias": state["embeddings.patch_embeddings.bias"],
           "norm.weight": state["norm.weight"], "norm.bias": state["norm.bias"]}  # fmt: skip
    gated = any("gate_proj" in k for k in state)
    mlp = (
        {"gate_proj": "fc1_g", "up_proj": "fc1_x", "down_proj": "fc2"}
        if gated
        else {"up_proj": "fc1", "down_proj": "fc2"}
    )
    for i in range(3):
        src, dst = f"layer.{i}.", f"blocks.{i}."
        out[f"{dst}attn.qkv.weight"] = torch.cat([state[f"{src}attention.{x}_proj.weight"] for x in "qkv"])
        out[f"{dst}attn.q_bias"] = state[f"{src}attention.q_proj.bias"]
        out[f"{dst}attn.v_bias"] = state[f"{src}attention.v_proj.bias"]
        out[f"{dst}gamma_1"], out[f"{dst}gamma_2"] = (state[f"{src}layer_scale{j}.lambda1"] for j in (1, 2))
        for p in ("weight", "bias"):
            out[f"{dst}attn.proj.{p}"] = state[f"{src}attention.o_proj.{p}"]
            for norm in ("norm1", "norm2"):
                out[f"{dst}{norm}.{p}"] = state[f"{src}{norm}.{p}"]
            for theirs, timm_name in mlp.items():
                out[f"{dst}mlp.{timm_name}.{p}"] = state[f"{src}mlp.{theirs}.{p}"]
    return out


def test_timm_dinov3_folder_matches_transformers(dinov3_folder, tmp_path):
    """The timm converter checked without timm: the same weights in timm's keys load to the same model."""
    import json

    from sinder.models.state_io import save_state_dict

    folder, reference = dinov3_folder
    gated = reference.config.use_gated_mlp
    architecture = "vit_huge_plus_patch16_dinov3" if gated else "vit_small_patch16_dinov3_qkvb"
    state = {
        k.removeprefix("model."): v for k, v in reference.state_dict().items()
    }  # module path: model.layer.N
    save_state_dict(_as_timm_keys(state), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architecture": architecture,
                "global_pool": "token",
                "model_args": {"num_heads": 4, "embed_dim": 64, "depth": 3},
            }
        )
    )
    ours = sinder.load_backbone(str(tmp_path))
    assert ours.checkpoint_format.kind == "timm" and describe(ours).family == "dinov3"
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = reference(pixel_values=x, output_hidden_states=True).hidden_states
        mine = ours.get_intermediate_layers(x, n=3, norm=False)
    assert_blocks_match(mine, theirs[1:], prefix=1 + REGISTERS)
