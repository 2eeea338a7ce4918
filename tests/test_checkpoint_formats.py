"""Hugging Face and timm DINOv2 checkpoints load into our ViT with the source's outputs, and repairs write back.

The key maps in this file are written independently of ``sinder.models.formats`` (from transformers'
``modeling_dinov2*.py`` and timm's ``_convert_dinov2``), so a mistake in the production map cannot cancel out.
"""

import json

import pytest
import torch
from conftest import parity_path

from sinder.models.formats import (
    CheckpointError,
    CheckpointFormat,
    check_save_format,
    read_checkpoint,
    save_checkpoint,
)
from sinder.models.vit import ARCH_DEFAULTS, build_vit
from sinder.models.weights import load_backbone, save_state_dict, state_dict_sha256

TINY = {**ARCH_DEFAULTS, "embed_dim": 64, "depth": 2, "num_heads": 4, "img_size": 56}


def _tokens(model, x):
    """Class token, then register and patch tokens, after the final norm (HF's last_hidden_state)."""
    with torch.no_grad():
        out = model.forward_features(x)
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1)


def _randomized(config, seed=0):
    # Non-trivial layer scales and biases, so a swapped or dropped tensor changes the outputs.
    model = build_vit(config, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith((".bias", "gamma", "norm1.weight", "norm2.weight", "mask_token", "register_tokens")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model


# ------------------------------------------------------------------------------------------- Hugging Face
def test_hf_folder_reproduces_transformers_last_hidden_state():
    from safetensors.torch import load_file

    folder = parity_path("hf_dinov2_tiny")
    ref = load_file(str(folder / "reference.safetensors"))
    model = load_backbone(folder)
    assert model.checkpoint_format.kind == "hf"
    assert (model.embed_dim, len(model.blocks), model.num_register_tokens) == (64, 3, 0)
    err = (_tokens(model, ref["pixel_values"]) - ref["last_hidden_state"]).abs().max()
    assert err <= 1e-5, err


def test_hf_folder_through_the_backbone_spec():
    from benchmarks.core.backbones import backbone_problem, load, parse_backbone_spec

    folder = parity_path("hf_dinov2_tiny")
    spec = parse_backbone_spec(f"hf={folder}")
    assert backbone_problem(spec) is None
    assert load(spec).checkpoint_format.kind == "hf"
    assert "config.json" in backbone_problem(parse_backbone_spec(f"x={folder.parent}"))


def _hf_keys_independent(state, depth):
    """Official -> transformers Dinov2(WithRegisters)Model keys, written from modeling_dinov2*.py."""
    out = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if "register_tokens" in state:
        out["embeddings.register_tokens"] = state["register_tokens"]
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for p in ("weight", "bias"):
            q, k, v = state[f"{b}attn.qkv.{p}"].chunk(3)
            out[f"{h}attention.attention.query.{p}"] = q.clone()
            out[f"{h}attention.attention.key.{p}"] = k.clone()
            out[f"{h}attention.attention.value.{p}"] = v.clone()
            out[f"{h}attention.output.dense.{p}"] = state[f"{b}attn.proj.{p}"]
            out[f"{h}norm1.{p}"] = state[f"{b}norm1.{p}"]
            out[f"{h}norm2.{p}"] = state[f"{b}norm2.{p}"]
            if f"{b}mlp.w12.{p}" in state:
                out[f"{h}mlp.weights_in.{p}"] = state[f"{b}mlp.w12.{p}"]
                out[f"{h}mlp.weights_out.{p}"] = state[f"{b}mlp.w3.{p}"]
            else:
                out[f"{h}mlp.fc1.{p}"] = state[f"{b}mlp.fc1.{p}"]
                out[f"{h}mlp.fc2.{p}"] = state[f"{b}mlp.fc2.{p}"]
        out[f"{h}layer_scale1.lambda1"] = state[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = state[f"{b}ls2.gamma"]
    return out


def test_hf_with_registers_and_swiglu_folder(tmp_path):
    # Hugging Face's register model resizes position embeddings to the exact grid, antialiased, no 0.1 offset.
    config = {**TINY, "ffn_layer": "swiglufused", "num_register_tokens": 4, "interpolate_antialias": True,
              "interpolate_offset": 0.0}  # fmt: skip
    source = _randomized(config)
    hf_config = {"model_type": "dinov2_with_registers", "hidden_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "mlp_ratio": 4, "image_size": 56, "patch_size": 14, "num_channels": 3,
                 "qkv_bias": True, "layerscale_value": 1.0, "use_swiglu_ffn": True, "num_register_tokens": 4,
                 "layer_norm_eps": 1e-6, "hidden_act": "gelu"}  # fmt: skip
    folder = tmp_path / "dinov2-with-registers-tiny"
    save_state_dict(_hf_keys_independent(source.state_dict(), 2), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(hf_config))
    model = load_backbone(folder)
    assert model.num_register_tokens == 4 and model.config["ffn_layer"] == "swiglufused"
    for shape in ((2, 3, 56, 56), (1, 3, 42, 70)):  # native grid, and one that interpolates
        x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(_tokens(model, x), _tokens(source, x), atol=1e-6, rtol=0)


def test_hf_config_that_is_not_dinov2_is_refused(tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 64}))
    save_state_dict({"embeddings.cls_token": torch.zeros(1, 1, 64)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="model_type 'vit' is not a DINOv2"):
        load_backbone(folder)


# ------------------------------------------------------------------------------------------- timm
def _timm_keys_independent(state):
    """Official -> timm keys as timm's _convert_dinov2 produces them (no_embed_class for register models)."""
    out = {}
    for key, value in state.items():
        if key == "mask_token":
            continue
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        out[key] = value
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
        out["pos_embed"] = state["pos_embed"][:, 1:].clone()
    return out


@pytest.mark.parametrize("variant", ["mlp", "swiglu_reg"])
def test_timm_file_round_trips_to_identical_outputs(variant, tmp_path):
    config = {**TINY, "ffn_layer": "mlp"} if variant == "mlp" else {
        **TINY, "ffn_layer": "swiglufused", "num_register_tokens": 4}  # fmt: skip
    source = _randomized(config)
    timm_state = _timm_keys_independent(source.state_dict())
    path = tmp_path / "timm.safetensors"
    save_state_dict(timm_state, path)
    model = load_backbone(config, weights=path)
    assert model.checkpoint_format.kind == "timm"
    for shape in ((2, 3, 56, 56), (1, 3, 42, 70)):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
        assert torch.equal(_tokens(model, x), _tokens(source, x))
    # Written back in its source format, the file has timm's keys and the same tensors.
    out = tmp_path / "again.safetensors"
    save_checkpoint(model.state_dict(), out, "timm", config=model.config, source=model.checkpoint_format)
    again = read_checkpoint(out).state
    assert read_checkpoint(out).format.kind == "timm"
    from safetensors.torch import load_file

    written = load_file(str(out))
    assert sorted(written) == sorted(timm_state)
    assert all(torch.equal(written[k], timm_state[k]) for k in timm_state)
    assert sorted(again) == sorted(model.state_dict())


def test_timm_file_alone_gives_its_architecture(tmp_path):
    # A released width (384 -> 6 heads), registers and SwiGLU read off the tensors; no config given.
    config = {**ARCH_DEFAULTS, "embed_dim": 384, "depth": 2, "num_heads": 6, "img_size": 28,
              "ffn_layer": "swiglufused", "num_register_tokens": 4}  # fmt: skip
    source = _randomized(config)
    path = tmp_path / "vit_small_reg4.safetensors"
    save_state_dict(_timm_keys_independent(source.state_dict()), path)
    model = load_backbone(path)
    got = {k: model.config[k] for k in ("embed_dim", "depth", "num_heads", "img_size", "ffn_layer",
                                          "num_register_tokens")}  # fmt: skip
    assert got == {k: config[k] for k in got}
    # timm resizes position embeddings to the exact grid, antialiased (unlike the official 0.1 offset).
    assert (model.config["interpolate_offset"], model.config["interpolate_antialias"]) == (0.0, True)
    assert model.name == "vit_small_reg4"
    x = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_tokens(model, x), _tokens(source, x))


def test_unknown_width_asks_for_the_architecture(tmp_path):
    path = tmp_path / "tiny_timm.safetensors"
    save_state_dict(_timm_keys_independent(_randomized(TINY).state_dict()), path)
    with pytest.raises(CheckpointError, match="attention heads a 64-wide model.*load_backbone\\(config"):
        load_backbone(path)


# ------------------------------------------------------------------------------------------- writing back
def test_hf_repair_output_official_and_source_formats(tmp_path):
    from safetensors.torch import load_file

    folder = parity_path("hf_dinov2_tiny")
    model = load_backbone(folder)
    x = torch.randn(1, 3, 42, 56, generator=torch.Generator().manual_seed(1))
    official = tmp_path / "repaired.safetensors"
    save_checkpoint(model.state_dict(), official, check_save_format("official", model.checkpoint_format, official),
                    config=model.config, source=model.checkpoint_format)  # fmt: skip
    assert "blocks.0.attn.qkv.weight" in load_file(str(official))
    # The file alone loads with Hugging Face's interpolation (the architecture travels in its metadata).
    assert torch.equal(_tokens(load_backbone(official), x), _tokens(model, x))
    # The content is the same whatever the format: HF -> official is lossless.
    assert state_dict_sha256(read_checkpoint(official).state) == state_dict_sha256(read_checkpoint(folder).state)

    with pytest.raises(ValueError, match="folder name without a suffix"):
        check_save_format("source", model.checkpoint_format, tmp_path / "x.safetensors")
    out = tmp_path / "repaired_hf"
    save_checkpoint(model.state_dict(), out, check_save_format("source", model.checkpoint_format, out),
                    config=model.config, source=model.checkpoint_format)  # fmt: skip
    written, original = load_file(str(out / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    assert sorted(written) == sorted(original)
    assert all(torch.equal(written[k], original[k]) for k in original)
    assert json.loads((out / "config.json").read_text()) == json.loads((folder / "config.json").read_text())
    with pytest.raises(FileExistsError):
        save_checkpoint(model.state_dict(), out, "hf", config=model.config, source=model.checkpoint_format)
    with pytest.raises(ValueError, match="'official' or 'source'"):
        check_save_format("hf", CheckpointFormat("hf"), out)


def test_repair_command_writes_the_source_format(tmp_path):
    from sinder.repair.config import RepairConfig
    from sinder.repair.job import repair_checkpoint
    from sinder.utils.synthetic_images import write_synthetic_photos

    folder = parity_path("hf_dinov2_tiny")
    images = write_synthetic_photos(tmp_path / "imgs", 6)
    config = RepairConfig(resolution=56, num_images=4, max_iters=2, window=2, n_samples=2_000,
                          checkpoint_every=1, holdout_images=2, sigma=1)  # fmt: skip
    out = tmp_path / "repaired_hf"
    report = repair_checkpoint(str(folder), images, out, config=config, progress=False, device="cpu",
                               save_format="source")  # fmt: skip
    assert report["output_format"] == "hf"
    assert (out / "config.json").is_file()
    assert read_checkpoint(out).format.kind == "hf"


def test_run_cli_takes_a_hugging_face_folder(tmp_path):
    from conftest import run_smoke_suite

    folder = parity_path("hf_dinov2_tiny")
    code, records = run_smoke_suite("imagenet_knn", tmp_path / "runs", tmp_path / "cache", ["imagenet_knn"],
                                    backbone=f"hf={folder}")  # fmt: skip
    assert code == 0
    backbone = records["imagenet_knn"]["backbone"]
    assert backbone["label"] == "hf"
    assert backbone["weights_sha256"] == load_backbone(folder).weights_sha256


def test_repair_cli_refuses_a_file_for_a_hugging_face_source_format(tmp_path, capsys):
    from benchmarks.cli import main

    folder = parity_path("hf_dinov2_tiny")
    out = tmp_path / "repaired.safetensors"
    code = main(["repair", "--backbone", str(folder), "--images", str(tmp_path), "--out", str(out),
                 "--save-format", "source", "--no-progress"])  # fmt: skip
    assert code == 2
    captured = capsys.readouterr()
    assert "folder name without a suffix" in captured.out + captured.err
    assert not out.exists()
