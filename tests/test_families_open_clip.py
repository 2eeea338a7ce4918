"""OpenCLIP's own checkpoint layout (``visual.transformer.resblocks.N...``): a random small ``open_clip.CLIP`` saved
as its state dict, loaded with ``sinder.load_backbone``; every block's patch tokens must match open_clip's
resblocks (forward hooks; the class token dropped), and our pooled feature times ``visual.proj`` open_clip's image
embedding. open_clip is a test-only reference (``tests/family_libs.py``).
"""

from __future__ import annotations

import json

import pytest
import torch
from family_libs import import_reference
from parity import assert_blocks_match

import sinder
from sinder.models.backbone import describe
from sinder.models.state_io import save_state_dict

open_clip = import_reference("open_clip")

TEXT = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}


def _clip(quick_gelu: bool, image_size: int = 32, **vision) -> torch.nn.Module:
    torch.manual_seed(0)
    vision_cfg = {"image_size": image_size, "patch_size": 8, "width": 128, "layers": 3, **vision}
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=TEXT, quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # non-trivial norms, biases and layer scales so that a mapping mistake shows
        for name, p in model.visual.named_parameters():
            if any(w in name for w in ("ln_", "bias", "gamma")):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _blocks(visual, x):
    outputs = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for b in visual.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            embedding = visual(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, embedding


def _check(ours, reference, x, proj):
    theirs, embedding = _blocks(reference.visual, x)
    with torch.no_grad():
        mine = ours.get_intermediate_layers(x, n=3, norm=False)
        pooled = ours.forward_features(x)["x_norm_clstoken"]
    assert len(mine) == 3
    assert_blocks_match(mine, theirs, prefix=1)
    # the pooled feature is ln_post's class token before the projection to the joint space
    assert (pooled @ proj - embedding).abs().max().item() <= 1e-5


def test_openai_style_file_by_name_is_quickgelu_and_matches_open_clip(tmp_path):
    reference = _clip(quick_gelu=True)
    path = tmp_path / "ViT-T-8-quickgelu.safetensors"  # full CLIP state dict: visual.* and the text tower
    save_state_dict(reference.state_dict(), path)
    ours = sinder.load_backbone(str(path))
    d = describe(ours)
    assert (d.family, d.num_prefix_tokens, d.pooling, d.patch_size) == ("clip", 1, "cls", 8)
    assert (
        ours.config["act_layer"] == "quick_gelu" and ours.config["num_heads"] == 2
    )  # width 128 / head_width 64
    assert ours.checkpoint_format.kind == "open_clip"
    _check(
        ours,
        reference,
        torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
        reference.visual.proj,
    )


def test_folder_with_open_clip_config_sets_activation_heads_and_layer_scale(tmp_path):
    reference = _clip(quick_gelu=False, head_width=32, ls_init_value=0.5)
    folder = tmp_path / "openai-lookalike"  # the name says openai, the config says GELU: the config wins
    folder.mkdir()
    save_state_dict(reference.state_dict(), folder / "open_clip_model.safetensors")
    cfg = {
        "model_cfg": {
            "embed_dim": 32,
            "quick_gelu": False,
            "vision_cfg": {"head_width": 32, "ls_init_value": 0.5},
        }
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    ours = sinder.load_backbone(str(folder))
    assert ours.config["act_layer"] == "gelu" and ours.config["num_heads"] == 4 and ours.config["init_values"]
    _check(
        ours,
        reference,
        torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
        reference.visual.proj,
    )


def test_another_size_matches_open_clip_resized_on_loading(tmp_path):
    """open_clip resizes position embeddings when loading at another size (``resize_pos_embed``); ours at run time."""
    source = _clip(quick_gelu=True)
    path = tmp_path / "tower-openai.pt"  # the image tower alone, as a .pt state dict
    torch.save(
        {k[len("visual.") :]: v for k, v in source.state_dict().items() if k.startswith("visual.")}, path
    )
    ours = sinder.load_backbone(str(path))
    resized = _clip(quick_gelu=True, image_size=48)
    state = source.state_dict()
    open_clip.model.resize_pos_embed(state, resized)
    resized.load_state_dict(state)
    _check(
        ours,
        resized,
        torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2)),
        resized.visual.proj,
    )


def test_an_attention_pooled_tower_is_refused(tmp_path):
    from sinder.models.formats import CheckpointError

    folder = tmp_path / "coca"
    folder.mkdir()
    save_state_dict(_clip(quick_gelu=False).state_dict(), folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"vision_cfg": {"attentional_pool": True}}})
    )
    with pytest.raises(
        CheckpointError,
        match=r"this OpenCLIP image tower is not supported \(attentional_pool\); "
        r"supported: ViT towers with class-token pooling",
    ):
        sinder.load_backbone(str(folder))
