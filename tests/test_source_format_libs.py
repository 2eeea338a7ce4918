"""``--save-format source`` for timm folders and OpenCLIP checkpoints (issue 21 item 3): an edited model written
back in the source's layout loads into the library's own model (``timm.create_model(architecture,
pretrained=False, **model_args)`` + ``load_state_dict(strict=True)``; open_clip's ``CLIP.load_state_dict``) and
computes what our edited model computes, per block, <= 1e-5; what our reader ignores (timm's classifier head,
OpenCLIP's text tower and ``visual.proj``) is carried over unchanged. timm and open_clip are test-only references
(``tests/family_libs.py``)."""

from __future__ import annotations

import json

import pytest
import torch
from family_libs import import_reference
from safetensors.torch import load_file

import sinder
from sinder.models.formats import check_save_format, save_checkpoint
from sinder.models.state_io import save_state_dict
from sinder.remedies.clamp import clamp_singular_values

SMALL = {"embed_dim": 64, "depth": 3, "num_heads": 4, "img_size": 32, "patch_size": 8, "num_classes": 10}
# architecture -> (prefix tokens of timm's block outputs, extra constructor arguments)
TIMM_CASES = {
    "vit_base_patch16_clip_quickgelu_224": (1, {}),
    "vit_base_patch16_siglip_224": (0, {}),
    "deit3_base_patch16_224": (1, {}),
    "vit_small_patch16_dinov3_qkvb": (5, {"global_pool": "token"}),
    "vit_huge_plus_patch16_dinov3": (5, {"global_pool": "token"}),
    # average-pooled: fc_norm=False (final norm kept), and fc_norm by timm's default (norm an Identity)
    "vit_medium_patch16_gap_240": (0, {}),
    "vit_small_patch16_224": (3, {"global_pool": "avg", "reg_tokens": 2}),
}


def _edit(model) -> None:
    """Clamp the block linears in place (an edit that changes weights, as a repair does)."""
    edited, layers = clamp_singular_values(model, gamma=1.0)
    assert any(info.n_clamped for info in layers)
    model.load_state_dict(edited)


def _inflate(named_parameters, block_word: str) -> None:
    with torch.no_grad():  # non-trivial norms/biases/tokens, block weights above the clamp's bound
        for name, p in named_parameters:
            if any(w in name for w in ("norm", "bias", "gamma", "token", "latent", "pos_embed", "ln_", "embedding")):
                p.add_(torch.randn_like(p) * 0.1)
            elif block_word in name and name.endswith("weight") and p.ndim == 2:
                p.mul_(20)


def _write(model, out) -> str:
    kind = check_save_format("source", model.checkpoint_format, out)
    save_checkpoint(model.state_dict(), out, kind, config=model.config, source=model.checkpoint_format)
    return kind


def _outputs(blocks, run):
    outputs = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone())) for b in blocks]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


@pytest.mark.parametrize("architecture", [a for a, case in TIMM_CASES.items() if case])
def test_timm_folder_written_back_loads_in_timm(tmp_path, architecture):
    timm = import_reference("timm")
    from timm.models._hub import save_for_hf

    prefix, extra = TIMM_CASES[architecture]
    torch.manual_seed(0)
    reference = timm.create_model(architecture, pretrained=False, **{**SMALL, **extra, "dynamic_img_size": True})
    _inflate(reference.named_parameters(), "blocks.")
    source = tmp_path / architecture
    save_for_hf(reference.eval(), source, safe_serialization=True)
    model = sinder.load_backbone(str(source))
    _edit(model)
    out = tmp_path / "repaired"
    assert _write(model, out) == "timm"

    timm_config = json.loads((source / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == timm_config
    before, written = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(written) == set(before)
    changed = {k for k in before if not torch.equal(before[k], written[k])}
    assert changed and all(k.startswith("blocks.") and k.endswith("weight") for k in changed), changed
    assert any(k.startswith("head.") for k in before)  # the classifier, not ours: carried over unchanged

    theirs = timm.create_model(timm_config["architecture"], pretrained=False, **timm_config["model_args"]).eval()
    theirs.load_state_dict(written, strict=True)
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    blocks = _outputs(theirs.blocks, lambda: theirs.forward_features(x))
    with torch.no_grad():
        mine = model.get_intermediate_layers(x, n=3, norm=False)
    for i, tokens in enumerate(mine):
        assert (tokens - blocks[i][:, prefix:]).abs().max().item() <= 1e-5, f"{architecture} block {i}"
    if extra.get("global_pool", theirs.global_pool) == "avg":  # fc_norm carried: timm's pooled feature is ours
        assert any(k.startswith("fc_norm.") for k in before) != ("norm.weight" in before)
        with torch.no_grad():
            pooled = theirs.forward_head(theirs.forward_features(x), pre_logits=True)
            mine_pooled = model.forward_features(x)["x_norm_clstoken"]
        assert (mine_pooled - pooled).abs().max().item() <= 1e-5, architecture


def test_a_timm_output_is_a_folder(tmp_path):
    timm = import_reference("timm")
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    save_for_hf(timm.create_model("deit3_base_patch16_224", pretrained=False, **SMALL), tmp_path / "deit3",
                safe_serialization=True)  # fmt: skip
    model = sinder.load_backbone(str(tmp_path / "deit3"))
    with pytest.raises(ValueError, match="source format of this timm checkpoint is a folder"):
        check_save_format("source", model.checkpoint_format, tmp_path / "out.safetensors")


def _open_clip_model(open_clip, quick_gelu: bool):
    torch.manual_seed(0)
    text = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
    vision = {"image_size": 32, "patch_size": 8, "width": 128, "layers": 3, "ls_init_value": 0.5}
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()
    _inflate(model.visual.named_parameters(), "resblocks.")
    return model


def _check_open_clip(open_clip, model, written, quick_gelu: bool, reference):
    theirs = _open_clip_model(open_clip, quick_gelu)
    theirs.load_state_dict(written, strict=True)  # the whole CLIP: the text tower came along
    text = {k: v for k, v in reference.state_dict().items() if not k.startswith("visual.")}
    assert all(torch.equal(written[k], v) for k, v in text.items()) and text
    assert torch.equal(written["visual.proj"], reference.visual.proj)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    blocks = _outputs(theirs.visual.transformer.resblocks, lambda: theirs.visual(x))
    with torch.no_grad():
        mine = model.get_intermediate_layers(x, n=3, norm=False)
        pooled = model.forward_features(x)["x_norm_clstoken"]
        embedding = theirs.visual(x)
    for i, tokens in enumerate(mine):
        assert (tokens - blocks[i][:, 1:]).abs().max().item() <= 1e-5, f"block {i}"
    assert (pooled @ reference.visual.proj - embedding).abs().max().item() <= 1e-4 * embedding.abs().max().item()


def test_open_clip_file_written_back_loads_in_open_clip(tmp_path):
    open_clip = import_reference("open_clip")
    reference = _open_clip_model(open_clip, quick_gelu=True)
    source = tmp_path / "ViT-T-8-quickgelu.safetensors"  # the name says QuickGELU (open_clip's rule)
    save_state_dict(reference.state_dict(), source)
    model = sinder.load_backbone(str(source))
    _edit(model)
    out = tmp_path / "repaired.safetensors"  # the name no longer says it: the file's metadata does
    assert _write(model, out) == "open_clip"
    written = load_file(str(out))
    assert set(written) == set(reference.state_dict())
    _check_open_clip(open_clip, model, written, True, reference)
    again = sinder.load_backbone(str(out))
    assert again.config["act_layer"] == "quick_gelu"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


def test_open_clip_folder_written_back_is_a_folder(tmp_path):
    open_clip = import_reference("open_clip")
    reference = _open_clip_model(open_clip, quick_gelu=False)
    source = tmp_path / "openclip"
    source.mkdir()
    save_state_dict(reference.state_dict(), source / "open_clip_model.safetensors")
    (source / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": False}}))
    model = sinder.load_backbone(str(source))
    _edit(model)
    with pytest.raises(ValueError, match="source format of this OpenCLIP checkpoint is a folder"):
        check_save_format("source", model.checkpoint_format, tmp_path / "out.safetensors")
    out = tmp_path / "repaired"
    _write(model, out)
    assert (out / "open_clip_config.json").read_text() == (source / "open_clip_config.json").read_text()
    _check_open_clip(open_clip, model, load_file(str(out / "open_clip_model.safetensors")), False, reference)
