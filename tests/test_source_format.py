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
