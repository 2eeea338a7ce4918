"""``--save-format source`` for transformers CLIP and SigLIP vision towers (issue 21 item 3): an edited model is
written back as a transformers folder (config.json + model.safetensors, q/k/v unfused, the source's key prefix)
that transformers' own ``from_pretrained`` loads, computing what our edited model computes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import sinder
from sinder.models.formats import check_save_format, save_checkpoint
from sinder.remedies.clamp import clamp_singular_values

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "clip": (transformers.CLIPVisionConfig, transformers.CLIPVisionModel, 1),
    "siglip": (transformers.SiglipVisionConfig, transformers.SiglipVisionModel, 0),
}


def source_folder(tmp_path, family: str, prefix: str):
    """A random small transformers tower saved by ``save_pretrained``; with ``prefix`` its keys carry it (as
    transformers 4 and full models wrote them)."""
    config_cls, model_cls, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = config_cls(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                        image_size=56, patch_size=14)  # fmt: skip
    model = model_cls(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a mapping mistake shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            elif "layers." in name and name.endswith(("fc1.weight", "fc2.weight", "out_proj.weight", "v_proj.weight")):
                p.mul_(20)  # singular values above the clamp's bound
    folder = tmp_path / f"{family}-source"
    model.save_pretrained(folder)
    if prefix:
        weights = folder / "model.safetensors"
        save_file({prefix + k: v for k, v in load_file(str(weights)).items()}, str(weights), {"format": "pt"})
    return folder


def keys_of(path) -> set[str]:
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize("prefix", ["", "vision_model."])
def test_edited_tower_written_back_loads_in_transformers(tmp_path, family, prefix):
    source = source_folder(tmp_path, family, prefix)
    model = sinder.load_backbone(str(source))
    assert model.checkpoint_format.kind == "hf" and model.checkpoint_format.key_prefix == prefix
    original = {k: v.clone() for k, v in model.state_dict().items()}
    edited, layers = clamp_singular_values(model, gamma=1.0)
    assert any(info.n_clamped for info in layers)
    model.load_state_dict(edited)
    out = tmp_path / "repaired"
    kind = check_save_format("source", model.checkpoint_format, out)
    save_checkpoint(edited, out, kind, config=model.config, source=model.checkpoint_format)

    # The folder has the source's config and exactly the source's keys (prefix included, q/k/v separate).
    assert json.loads((out / "config.json").read_text()) == json.loads((source / "config.json").read_text())
    assert keys_of(out / "model.safetensors") == keys_of(source / "model.safetensors")
    written, before = load_file(str(out / "model.safetensors")), load_file(str(source / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], written[k])]
    assert changed and all(k.endswith("weight") and ("proj" in k or "fc" in k) for k in changed)
    assert any(not torch.equal(original[k], edited[k]) for k in original)

    config_cls, model_cls, n_prefix = FAMILIES[family]
    theirs = model_cls.from_pretrained(out).eval()
    x = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        result = theirs(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        mine = model.get_intermediate_layers(x, n=3, norm=False)
        pooled = model.forward_features(x)["x_norm_clstoken"]
    for i, tokens in enumerate(mine):
        assert (tokens - result.hidden_states[i + 1][:, n_prefix:]).abs().max().item() <= 1e-5, f"block {i}"
    assert (pooled - result.pooler_output).abs().max().item() <= 1e-5
    # and our loader reads the written folder back to the same weights
    again = sinder.load_backbone(str(source), weights=str(out))
    assert all(torch.equal(v, edited[k]) for k, v in again.state_dict().items())


def test_source_format_of_a_folder_needs_a_folder_name(tmp_path):
    source = source_folder(tmp_path, "clip", "")
    model = sinder.load_backbone(str(source))
    with pytest.raises(ValueError, match="give a folder name without a suffix"):
        check_save_format("source", model.checkpoint_format, tmp_path / "out.safetensors")


def _clamped(model):
    """``model`` with its block linears clamped (an edit that changes weights); the edited official state."""
    edited, layers = clamp_singular_values(model, gamma=1.0)
    assert any(info.n_clamped for info in layers)
    model.load_state_dict(edited)
    return edited


def _inflate(model):
    """Random norms/biases/tokens and block weights above the clamp's bound, so that a mapping mistake shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "token" in name or "lambda" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif "layer" in name and name.endswith(("proj.weight", "fc1.weight", "fc2.weight")):
                p.mul_(20)


def _write_source(model, out):
    kind = check_save_format("source", model.checkpoint_format, out)
    save_checkpoint(model.state_dict(), out, kind, config=model.config, source=model.checkpoint_format)
    return kind


def _only_edited_weights_changed(before: dict, written: dict):
    assert set(written) == set(before)  # the source's keys, no more, no fewer
    changed = [k for k in before if not torch.equal(before[k], written[k])]
    assert changed and all(k.endswith("weight") and ("proj" in k or "fc" in k) for k in changed), changed


def _clamped_round_trip(reference, source, out):
    """Save ``reference`` as a transformers folder at ``source``, load it, clamp it and write it back to ``out`` in
    the source format; checks that only the edited weights changed. (our model, edited state, written tensors)"""
    reference.save_pretrained(source)
    model = sinder.load_backbone(str(source))
    edited = _clamped(model)
    assert _write_source(model, out) == "hf"
    before, written = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    _only_edited_weights_changed(before, written)
    return model, edited, written


@pytest.mark.parametrize("gated", [False, True])
def test_dinov3_written_back_loads_in_transformers(tmp_path, gated):
    torch.manual_seed(0)
    config = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                          intermediate_size=128, num_register_tokens=4, image_size=32, patch_size=8,
                                          use_gated_mlp=gated, hidden_act="silu" if gated else "gelu")  # fmt: skip
    reference = transformers.DINOv3ViTModel(config).eval()
    _inflate(reference)
    out = tmp_path / "repaired"
    model, edited, written = _clamped_round_trip(reference, tmp_path / "dinov3", out)
    assert not any("k_proj.bias" in k for k in keys_of(out / "model.safetensors"))  # the source has none

    theirs = transformers.DINOv3ViTModel.from_pretrained(out).eval()
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hidden = theirs(pixel_values=x, output_hidden_states=True).hidden_states
        mine = model.get_intermediate_layers(x, n=3, norm=False)
    for i, tokens in enumerate(mine):
        assert (tokens - hidden[i + 1][:, 5:]).abs().max().item() <= 1e-5, f"block {i}"
    again = sinder.load_backbone(str(out))
    assert all(torch.equal(v, edited[k]) for k, v in again.state_dict().items())


def test_siglip2_written_back_loads_in_transformers(tmp_path):
    patch = 8
    torch.manual_seed(0)
    config = transformers.Siglip2VisionConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                              intermediate_size=128, num_patches=16, patch_size=patch)
    reference = transformers.Siglip2VisionModel(config).eval()
    _inflate(reference)
    out = tmp_path / "repaired"
    model, _, _ = _clamped_round_trip(reference, tmp_path / "siglip2", out)

    theirs = transformers.Siglip2VisionModel.from_pretrained(out).eval()
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(3))
    rows, cols = 24 // patch, 40 // patch
    patches = x.reshape(2, 3, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1).reshape(2, rows * cols, -1)
    with torch.no_grad():
        result = theirs(pixel_values=patches, pixel_attention_mask=torch.ones(2, rows * cols, dtype=torch.long),
                        spatial_shapes=torch.tensor([[rows, cols]] * 2), output_hidden_states=True)
        mine = model.get_intermediate_layers(x, n=3, norm=False)
        pooled = model.forward_features(x)["x_norm_clstoken"]
    for i, tokens in enumerate(mine):
        assert (tokens - result.hidden_states[i + 1]).abs().max().item() <= 1e-5, f"block {i}"
    assert (pooled - result.pooler_output).abs().max().item() <= 1e-5


def test_keys_the_reader_ignores_are_carried_into_the_output(tmp_path):
    """A ``CLIPVisionModelWithProjection`` folder: its ``visual_projection`` is not the backbone's, yet the written
    folder is a complete checkpoint of the source (the projection unchanged), with its preprocessing config."""
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=128, image_size=32, patch_size=8, projection_dim=16)
    reference = transformers.CLIPVisionModelWithProjection(config).eval()
    _inflate(reference)
    source = tmp_path / "clip-with-projection"
    reference.save_pretrained(source)
    (source / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                                                 "crop_size": {"height": 32, "width": 32}}))
    model = sinder.load_backbone(str(source))
    _clamped(model)
    out = tmp_path / "repaired"
    _write_source(model, out)
    before, written = load_file(str(source / "model.safetensors")), load_file(str(out / "model.safetensors"))
    _only_edited_weights_changed(before, written)
    assert "visual_projection.weight" in written
    assert (out / "preprocessor_config.json").read_text() == (source / "preprocessor_config.json").read_text()
    theirs = transformers.CLIPVisionModelWithProjection.from_pretrained(out).eval()
    assert torch.equal(theirs.visual_projection.weight, reference.visual_projection.weight)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        embeds = theirs(pixel_values=x).image_embeds
        pooled = model.forward_features(x)["x_norm_clstoken"]
    assert (pooled @ reference.visual_projection.weight.T - embeds).abs().max().item() <= 1e-5


def test_a_source_that_is_gone_is_named(tmp_path):
    import shutil

    source = source_folder(tmp_path, "siglip", "")
    model = sinder.load_backbone(str(source))
    shutil.rmtree(source)
    with pytest.raises(ValueError, match=r"the source checkpoint .*siglip-source is gone"):
        _write_source(model, tmp_path / "out")


def test_a_tensor_the_source_cannot_hold_is_refused_unless_zero():
    from sinder.models.source_format import source_state

    raw = {"embeddings.cls_token": torch.ones(1, 1, 4), "embeddings.mask_token": torch.zeros(1, 1, 4),
           "embeddings.patch_embeddings.weight": torch.ones(4, 3, 2, 2)}

    def state(bias):
        return {"cls_token": torch.full((1, 1, 4), 2.0), "mask_token": torch.zeros(1, 4), "norm.weight": torch.ones(4),
                "norm.bias": bias, "patch_embed.proj.weight": torch.ones(4, 3, 2, 2)}  # fmt: skip

    with pytest.raises(ValueError, match="cannot write norm.weight back: the source checkpoint has no such tensor"):
        source_state(state(torch.zeros(4)), raw, ("hf", "dinov3_vit"))
    raw["norm.weight"] = torch.ones(4)
    out = source_state(state(torch.zeros(4)), raw, ("hf", "dinov3_vit"))  # the zero norm.bias is dropped
    assert set(out) == set(raw) and torch.equal(out["embeddings.cls_token"], torch.full((1, 1, 4), 2.0))
