"""Other ViT families: the model description (sinder.models.adapter) and loading a transformers CLIP vision tower.

Parity is against transformers itself (a test dependency only): a random small ``CLIPVisionModel`` saved with
``save_pretrained`` and loaded with ``sinder.load_backbone``; every block's patch tokens must match transformers'
``hidden_states`` (``hidden_states[i + 1]`` is block i's output, ``[:, 1:]`` drops the class token).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from parity import TINY_ENCODER, assert_tower_matches, save_tiny_tower

import sinder
from sinder.models.adapter import num_prefix_tokens
from sinder.models.backbone import PRETRAINED, describe
from sinder.models.vit import build_vit

ROOT = Path(__file__).resolve().parents[1]


def _one_plus_registers(path: Path) -> list[int]:
    """Lines of ``1 + <anything>.num_register_tokens`` (either order) in a file's code."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            sides = (node.left, node.right)
            one = any(isinstance(s, ast.Constant) and s.value == 1 for s in sides)
            reg = any("num_register_tokens" in ast.unparse(s) for s in sides)
            if one and reg:
                lines.append(node.lineno)
    return sorted(lines)


def test_only_the_adapter_counts_prefix_tokens():
    adapter = ROOT / "sinder/models/adapter.py"
    found = [f"{p.relative_to(ROOT)}:{line}" for top in ("sinder", "benchmarks") for p in sorted((ROOT / top).rglob("*.py"))
             if p != adapter for line in _one_plus_registers(p)]  # fmt: skip
    assert found == [], "ask sinder.models.adapter.num_prefix_tokens instead"


def test_the_scan_finds_the_pattern(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(
        "a = tokens[:, 1 + model.num_register_tokens:]\nb = int(getattr(m, 'num_register_tokens', 0)) + 1\n"
    )
    assert _one_plus_registers(fake) == [1, 2]


@pytest.mark.parametrize(("preset", "prefix"), [("dinov2_tiny", 1), ("dinov2_tiny_reg", 5)])
def test_dinov2_description(preset, prefix):
    model = build_vit(preset, seed=0)
    model.name = preset
    d = describe(model)
    assert (d.family, d.num_prefix_tokens, d.patch_size, d.pooling) == ("dinov2", prefix, 14, "cls")
    assert num_prefix_tokens(model) == prefix
    # the patch tokens are what follows the prefix: the class token and the registers come first
    x = torch.randn(1, 3, 28, 28)
    tokens = model.prepare_tokens_with_masks(x)
    assert tokens.shape[1] == prefix + 4


def test_description_of_an_official_preset_carries_its_release():
    model = build_vit("dinov2_vits14", seed=0)
    model.name = "dinov2_vits14"
    d = describe(model)
    assert d.pretrained_cfg is PRETRAINED["dinov2_vits14"]
    assert d.pretrained_cfg.input_size == (3, 518, 518)


transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    config = transformers.CLIPVisionConfig(
        **TINY_ENCODER,
        image_size=56,
        patch_size=14,
    )
    folder = tmp_path_factory.mktemp("clip")
    model = save_tiny_tower(transformers.CLIPVisionModel, config, folder)
    return folder, model


@pytest.mark.parametrize("size", [(56, 56), (42, 70)])
def test_clip_per_block_parity_with_transformers(clip_folder, size):
    folder, reference = clip_folder
    ours = sinder.load_backbone(str(folder))
    assert describe(ours).family == "clip" and num_prefix_tokens(ours) == 1
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = reference(
            pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True
        ).hidden_states
        mine = ours.get_intermediate_layers(x, n=3, norm=False)
    assert len(mine) == len(theirs) - 1 == 3
    for i, out in enumerate(mine):
        assert out.shape == theirs[i + 1][:, 1:].shape
        assert (out - theirs[i + 1][:, 1:]).abs().max().item() <= 1e-5, f"block {i}"


def test_clip_pooled_class_token_matches_transformers(clip_folder):
    folder, reference = clip_folder
    ours = sinder.load_backbone(str(folder))
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pooled = reference(pixel_values=x).pooler_output  # post_layernorm of the last class token
        mine = ours.forward_features(x)["x_norm_clstoken"]
    assert (mine - pooled).abs().max().item() <= 1e-5


def test_unknown_activation_is_refused(tmp_path):
    from sinder.models.families.clip import config_from_clip

    with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
        config_from_clip({"hidden_act": "relu", "hidden_size": 64, "intermediate_size": 128}, "x")


def test_clip_source_format_is_a_transformers_folder(clip_folder, tmp_path):
    # the round trip through transformers itself: tests/test_source_format.py
    from sinder.models.formats import CheckpointFormat, check_save_format

    ours = sinder.load_backbone(str(clip_folder[0]))
    assert check_save_format("source", ours.checkpoint_format, tmp_path / "out") == "hf"
    assert check_save_format("official", ours.checkpoint_format, tmp_path / "out.safetensors") == "official"
    unknown = CheckpointFormat("hf", {"model_type": "vit"})
    with pytest.raises(ValueError, match="writing a 'vit' folder is not supported yet"):
        check_save_format("source", unknown, tmp_path / "out")


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    config = transformers.SiglipVisionConfig(
        **TINY_ENCODER,
        image_size=56,
        patch_size=14,
    )
    folder = tmp_path_factory.mktemp("siglip")
    model = save_tiny_tower(transformers.SiglipVisionModel, config, folder)
    return folder, model


@pytest.mark.parametrize("size", [(56, 56), (42, 70)])
def test_siglip_per_block_parity_with_transformers(siglip_folder, size):
    folder, reference = siglip_folder
    ours = sinder.load_backbone(str(folder))
    d = describe(ours)
    assert (d.family, d.num_prefix_tokens, d.pooling) == ("siglip", 0, "attention")
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = reference(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
    assert len(out.hidden_states) == 4
    assert_tower_matches(
        ours, x, out, prefix=0
    )  # no class token: every token is a patch; pooled: the attention pool


def test_siglip_has_no_class_token_to_return(siglip_folder):
    ours = sinder.load_backbone(str(siglip_folder[0]))
    with pytest.raises(ValueError, match="a siglip model has no class token"):
        ours.get_intermediate_layers(torch.zeros(1, 3, 56, 56), n=1, return_class_token=True)


def test_an_unknown_transformers_folder_names_the_accepted_types(tmp_path):
    from sinder.models.formats import (
        DINOV2_MODEL_TYPES,
        TRANSFORMERS_FAMILIES,
        CheckpointError,
        config_from_hf,
    )

    with pytest.raises(
        CheckpointError,
        match=r"model_type 'vit' is not a DINOv2 nor another supported vision model \(CLIP, SigLIP, "
        r"SigLIP 2, DINOv3\); expected one of "
        r"'dinov2', 'dinov2_with_registers', 'clip_vision_model', 'siglip_vision_model'",
    ) as err:
        config_from_hf({"model_type": "vit"}, "x")
    named = str(err.value).split("expected one of ")[1]
    assert named.split(", ") == [repr(m) for m in (*DINOV2_MODEL_TYPES, *TRANSFORMERS_FAMILIES)]
    assert {"dinov3_vit", "siglip2_vision_model"} <= set(TRANSFORMERS_FAMILIES)
