"""Checkpoints in the formats users have, converted to and from the official key format (one dispatcher).

DINOv2 in three formats:

- ``official``: the DINOv2 repository's ``state_dict`` (``blocks.N.attn.qkv``, ``mlp.w12``, ``ls1.gamma`` ...).
- ``hf``: a Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` folder as ``save_pretrained`` writes it
  (``config.json`` + ``model.safetensors``; the architecture comes from ``config.json``).
- ``timm``: a ``vit_*_patch14_dinov2`` / ``vit_*_patch14_reg4_dinov2`` state dict (no mask token, SwiGLU packed
  as ``mlp.fc1``/``mlp.fc2``, registers as ``reg_token`` and, for the register models, the class position
  folded into ``cls_token`` with ``pos_embed`` holding patch positions only).

Other families (``sinder.models.families``, one module each), detected by ``config.json`` (transformers'
``model_type``, timm's ``architecture``) or by key names (OpenCLIP's ``visual.transformer.resblocks.``):

- ``hf``: transformers folders of ``CLIPVisionModel``, ``SiglipVisionModel``, ``Siglip2VisionModel``,
  ``DINOv3ViTModel``.
- ``timm``: timm folders (or a weights file beside its ``config.json``) of ``*_clip_*``, ``*_siglip_*``,
  ``deit3_*``, ``*_dinov2*`` and other plain ``vit_*`` ViTs (class-token, attention or average pooling).
- ``open_clip``: OpenCLIP's own layout, a weights file or a folder with ``open_clip_config.json``.

Everything else in the package works on official keys; this module is the only place that knows the others.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sinder.models.backbone import PREPROCESSOR_CONFIG
from sinder.models.families import clip, dinov3, open_clip, siglip, siglip2, timm_vit
from sinder.models.families.transformers_encoder import key_prefix
from sinder.models.source_format import WRITERS, source_state, writer_key
from sinder.models.state_io import normalize_keys, read_state_dict, save_state_dict
from sinder.models.vit import ARCH_DEFAULTS, PRESETS
from sinder.utils.atomic import atomic_write_text

FORMATS = ("official", "hf", "timm", "open_clip")
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_INDEX = "model.safetensors.index.json"
# Metadata key under which a written .safetensors keeps its architecture (so an official-format file of a
# Hugging Face model still loads with Hugging Face's position-embedding interpolation).
CONFIG_METADATA = "backbone_config"
# Every released DINOv2 uses 64-wide heads; the weights do not say how many heads there are.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1536: 24}
WEIGHT_SUFFIXES = {".safetensors", ".pth", ".pt", ".bin", ".ckpt"}


class CheckpointError(ValueError):
    """A checkpoint that is not a DINOv2 in one of the known formats (the message says what to do)."""


@dataclass(frozen=True)
class CheckpointFormat:
    """The key format a backbone's weights came in, and what is needed to write that format back."""

    kind: str = "official"  # one of FORMATS
    hf_config: dict[str, Any] | None = field(default=None, compare=False)  # config.json of an ``hf``/``timm`` source
    # writing back in the source format: DINOv2's formats, and the other families' (sinder.models.source_format)
    family: str = field(default="dinov2", compare=False)
    key_prefix: str = field(default="", compare=False)  # a transformers folder's key prefix (``vision_model.``)
    # the weights file or folder read: an other family's output is the source's state dict with ours laid over it
    path: str | None = field(default=None, compare=False)


# ------------------------------------------------------------------------------------------- detection
def is_checkpoint_path(name: str | Path) -> bool:
    """True for a Hugging Face folder or an existing weights file (what ``--backbone LABEL=PATH`` may name)."""
    path = Path(name)
    if path.is_dir():
        return True
    return path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded, from a cheap look (None when it looks loadable)."""
    path = Path(path)
    if path.is_file():
        return None
    if not path.is_dir():
        return f"checkpoint {path} does not exist"
    if (path / open_clip.CONFIG_FILE).is_file() and not (path / HF_CONFIG).is_file():
        if not any((path / name).is_file() for name in open_clip.WEIGHT_FILES):
            return f"{path}: no weights file ({', '.join(open_clip.WEIGHT_FILES)}) beside {open_clip.CONFIG_FILE}"
        return None
    if not (path / HF_CONFIG).is_file():
        return f"{path} is a folder without {HF_CONFIG}: not a Hugging Face checkpoint folder"
    if not any((path / name).is_file() for name in (*HF_WEIGHTS, HF_INDEX)):
        return f"{path}: no weights file ({', '.join(HF_WEIGHTS)} or {HF_INDEX}) beside {HF_CONFIG}"
    return None


def detect_format(state: Mapping[str, Tensor]) -> str:
    """``hf``, ``timm``, ``open_clip`` or ``official`` from the key names alone."""
    if open_clip.is_open_clip_state(state):
        return "open_clip"
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in state):
        return "hf"
    if "reg_token" in state or "attn_pool.latent" in state:  # timm's registers / SigLIP attention pool
        return "timm"
    if "mask_token" not in state and "cls_token" in state and not any(".mlp.w12." in k for k in state):
        # timm drops the (inference-unused) mask token; a GELU official file without it has timm's keys anyway.
        return "timm"
    return "official"


def _strip_hf_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # *ForImageClassification checkpoints nest the backbone and add a classifier the backbone does not use.
    out = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        for prefix in ("dinov2_with_registers.", "dinov2."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------- Hugging Face
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_BLOCK = {  # module path inside encoder.layer.N -> inside blocks.N (weight/bias suffix kept)
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
}
_HF_LAYER_SCALE = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}
_HF_QKV = ("query", "key", "value")  # the official fused qkv stacks them in this order
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def hf_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face DINOv2 keys -> official keys (query/key/value fused into qkv). Unknown keys pass through."""
    state = _strip_hf_prefix(state)
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _HF_LAYER.match(key)
        if not match:
            out[key] = value  # reported by the strict load as unexpected
            continue
        layer, rest = match.groups()
        if rest in _HF_LAYER_SCALE:
            out[f"blocks.{layer}.{_HF_LAYER_SCALE[rest]}"] = value
            continue
        module, _, param = rest.rpartition(".")
        if module.startswith("attention.attention.") and module.rsplit(".", 1)[1] in _HF_QKV:
            qkv.setdefault((layer, param), {})[module.rsplit(".", 1)[1]] = value
        elif module in _HF_BLOCK:
            out[f"blocks.{layer}.{_HF_BLOCK[module]}.{param}"] = value
        else:
            out[key] = value
    for (layer, param), parts in qkv.items():
        missing = [p for p in _HF_QKV if p not in parts]
        if missing:
            raise CheckpointError(f"layer {layer}: attention {param} lacks {missing}; the checkpoint is incomplete")
        out[f"blocks.{layer}.attn.qkv.{param}"] = torch.cat([parts[p] for p in _HF_QKV], dim=0)
    return out


def official_to_hf(state: Mapping[str, Tensor], hf_config: Mapping[str, Any]) -> dict[str, Tensor]:
    """Official keys -> the keys ``Dinov2Model`` / ``Dinov2WithRegistersModel`` of ``hf_config`` loads."""
    top = {v: k for k, v in _HF_TOP.items()}
    block = {v: k for k, v in _HF_BLOCK.items()}
    scale = {v: k for k, v in _HF_LAYER_SCALE.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "mask_token" and not hf_config.get("use_mask_token", True):
            continue
        if key in top:
            out[top[key]] = value
            continue
        match = re.match(r"^blocks\.(\d+)\.(.+)$", key)
        if not match:
            out[key] = value
            continue
        layer, rest = match.groups()
        prefix = f"encoder.layer.{layer}."
        module, _, param = rest.rpartition(".")
        if rest in scale:
            out[prefix + scale[rest]] = value
        elif module == "attn.qkv":
            for name, part in zip(_HF_QKV, value.chunk(3, dim=0)):
                out[f"{prefix}attention.attention.{name}.{param}"] = part.clone()
        elif module in block:
            out[f"{prefix}{block[module]}.{param}"] = value
        else:
            out[key] = value
    return out


def _single(value: Any, what: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{source}: non-square {what} {list(value)} is not supported")
        value = value[0]
    return int(value)


DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# The other families' transformers folders by model_type: (config.json -> our architecture, keys -> our keys).
TRANSFORMERS_FAMILIES = {
    **{m: (clip.config_from_clip, clip.clip_to_official) for m in clip.MODEL_TYPES},
    **{m: (siglip.config_from_siglip, siglip.siglip_to_official) for m in siglip.MODEL_TYPES},
    **{m: (siglip2.config_from_siglip2, siglip2.siglip2_to_official) for m in siglip2.MODEL_TYPES},
    **{m: (dinov3.config_from_dinov3, dinov3.dinov3_to_official) for m in dinov3.MODEL_TYPES},
}


def hf_converter(hf_config: Mapping[str, Any]):
    """The key converter of a transformers folder's ``config.json`` (DINOv2's for the DINOv2 model types)."""
    return TRANSFORMERS_FAMILIES.get(hf_config.get("model_type"), (None, hf_to_official))[1]


def config_from_hf(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our constructor arguments for the model a Hugging Face ``config.json`` describes."""
    model_type = hf.get("model_type")
    if model_type in TRANSFORMERS_FAMILIES:
        try:
            return TRANSFORMERS_FAMILIES[model_type][0](hf, source)
        except CheckpointError:
            raise
        except ValueError as err:  # the family modules raise ValueError; loaders report CheckpointError
            raise CheckpointError(str(err)) from err
    if model_type not in DINOV2_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type {model_type!r} is not a DINOv2 nor another supported vision model (CLIP, "
            "SigLIP, SigLIP 2, DINOv3); expected one of "
            + ", ".join(repr(m) for m in (*DINOV2_MODEL_TYPES, *TRANSFORMERS_FAMILIES))
        )
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in hf]
    if missing:
        raise CheckpointError(f"{source}: config.json lacks {missing}")
    swiglu = bool(hf.get("use_swiglu_ffn", False))
    if not swiglu and hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (DINOv2 uses 'gelu')")
    if float(hf.get("layer_norm_eps", 1e-6)) != 1e-6:
        raise CheckpointError(f"{source}: layer_norm_eps {hf['layer_norm_eps']} is not supported (DINOv2 uses 1e-6)")
    registers = model_type == "dinov2_with_registers"
    return {
        "img_size": _single(hf.get("image_size", 224), "image_size", source),
        "patch_size": _single(hf.get("patch_size", 14), "patch_size", source),
        "in_chans": int(hf.get("num_channels", 3)),
        "embed_dim": int(hf["hidden_size"]),
        "depth": int(hf["num_hidden_layers"]),
        "num_heads": int(hf["num_attention_heads"]),
        "mlp_ratio": float(hf.get("mlp_ratio", 4)),
        "qkv_bias": bool(hf.get("qkv_bias", True)),
        "ffn_bias": True,
        "proj_bias": True,
        "init_values": float(hf.get("layerscale_value", 1.0)) or 1.0,  # HF always has layer scale
        "ffn_layer": "swiglufused" if swiglu else "mlp",
        "num_register_tokens": int(hf.get("num_register_tokens", 4)) if registers else 0,
        # Hugging Face resizes position embeddings to the exact grid (no 0.1 offset); antialiased with registers.
        "interpolate_antialias": registers,
        "interpolate_offset": 0.0,
    }


def read_hf_folder_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a ``save_pretrained`` folder (an error naming the folder when there is none)."""
    config_path = Path(folder) / HF_CONFIG
    if not config_path.is_file():
        raise CheckpointError(
            f"{folder} is a folder without {HF_CONFIG}: expected a Hugging Face DINOv2 checkpoint as "
            "save_pretrained writes it (config.json + model.safetensors)"
        )
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from err


def read_hf_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, raw state dict) of a ``save_pretrained`` folder, single file or sharded."""

    folder = Path(folder)
    hf_config = read_hf_folder_config(folder)
    index = folder / HF_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(folder / shard))
        return hf_config, state
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return hf_config, read_state_dict(folder / name)
    raise CheckpointError(f"{folder}: no weights file ({', '.join(HF_WEIGHTS)} or {HF_INDEX}) beside config.json")


# ------------------------------------------------------------------------------------------- timm
def _is_packed_swiglu(state: Mapping[str, Tensor], block: str) -> bool:
    # timm packs SwiGLU's two input projections into fc1: twice as wide as fc2's input, unlike a plain MLP.
    fc1, fc2 = state.get(f"{block}mlp.fc1.weight"), state.get(f"{block}mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


def timm_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm DINOv2 keys -> official keys (register models get a zero class position: cls_token holds it)."""
    out = dict(state)
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        pos = out["pos_embed"]
        out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    blocks = {m.group(1) for k in out if (m := re.match(r"^(blocks\.\d+\.)mlp\.fc1\.weight$", k))}
    for block in blocks:
        if _is_packed_swiglu(out, block):
            for param in ("weight", "bias"):
                for timm_name, official in (("fc1", "w12"), ("fc2", "w3")):
                    if f"{block}mlp.{timm_name}.{param}" in out:
                        out[f"{block}mlp.{official}.{param}"] = out.pop(f"{block}mlp.{timm_name}.{param}")
    return out


def official_to_timm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official keys -> timm's (what timm's own DINOv2 checkpoint filter produces from an official file)."""
    out = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:].clone()
    for key in list(out):
        match = re.match(r"^(blocks\.\d+\.mlp\.)(w12|w3)\.(weight|bias)$", key)
        if match:
            out[f"{match.group(1)}{'fc1' if match.group(2) == 'w12' else 'fc2'}.{match.group(3)}"] = out.pop(key)
    return out


# ------------------------------------------------------------------------------------------- official
def _swiglu_hidden(dim: int, mlp_ratio: float = 4.0) -> int:
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def infer_official_config(state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """The architecture of an official-key state dict, read off its shapes (heads from the width)."""

    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise CheckpointError(f"{source}: no {key!r}; this is not a DINOv2 checkpoint")
    dim = int(state["cls_token"].shape[-1])
    depth = 1 + max((int(k.split(".")[1]) for k in state if re.match(r"^blocks\.\d+\.", k)), default=-1)
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = state.get("blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight")
    if depth < 1 or hidden is None:
        raise CheckpointError(f"{source}: no transformer blocks found; this is not a DINOv2 checkpoint")
    expected = 2 * _swiglu_hidden(dim) if swiglu else 4 * dim
    if hidden.shape[0] != expected:
        raise CheckpointError(
            f"{source}: MLP width {hidden.shape[0]} is not DINOv2's for width {dim} ({expected}); pass the "
            "architecture explicitly (a preset or a config file with the weights)"
        )
    if dim not in HEADS_BY_WIDTH:
        raise CheckpointError(
            f"{source}: the weights do not say how many attention heads a {dim}-wide model has (known widths: "
            f"{sorted(HEADS_BY_WIDTH)}); pass the architecture with the weights, e.g. "
            "--backbone LABEL=CONFIG.yaml:WEIGHTS or load_backbone(config, weights=PATH)"
        )
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    positions = int(state["pos_embed"].shape[1]) - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise CheckpointError(f"{source}: {positions} patch positions is not a square grid")
    patch = state["patch_embed.proj.weight"]
    ffn = "swiglufused" if swiglu else "mlp"
    # A released preset of the same shape gives the interpolation settings it was trained with.
    base = next(
        (dict(cfg) for cfg in PRESETS.values()
         if (cfg["embed_dim"], cfg["depth"], cfg["num_register_tokens"]) == (dim, depth, registers)
         and (cfg["ffn_layer"] != "mlp") == swiglu),
        {**ARCH_DEFAULTS, "interpolate_antialias": bool(registers), "interpolate_offset": 0.0 if registers else 0.1},
    )  # fmt: skip
    return {
        **base,
        "img_size": side * int(patch.shape[-1]),
        "patch_size": int(patch.shape[-1]),
        "in_chans": int(patch.shape[1]),
        "embed_dim": dim,
        "depth": depth,
        "num_heads": HEADS_BY_WIDTH[dim],
        "mlp_ratio": 4.0,
        "ffn_layer": ffn,
        "num_register_tokens": registers,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "proj_bias": "blocks.0.attn.proj.bias" in state,
        "ffn_bias": f"blocks.0.mlp.{'w12' if swiglu else 'fc1'}.bias" in state,
        "init_values": 1.0 if "blocks.0.ls1.gamma" in state else 0.0,
    }


# ------------------------------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    """A checkpoint read from disk: official-key tensors, its source format, its architecture if it says."""

    state: dict[str, Tensor]
    format: CheckpointFormat
    config: dict[str, Any] | None  # from config.json or the file's metadata; None when only shapes tell


def _safetensors_config(path: Path) -> dict[str, Any] | None:
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(CONFIG_METADATA)
    except Exception:  # unreadable files are reported by the reader with a proper message
        return None
    return json.loads(text) if text else None


def _timm_checkpoint(timm_config: dict[str, Any], raw: Mapping[str, Tensor], source: str) -> Checkpoint:
    """A timm checkpoint with its ``config.json``: DINOv2 through the DINOv2 converter, the others by family."""
    family = timm_vit.timm_family(str(timm_config.get("architecture", "")))
    if family == "dinov2":
        state = timm_to_official({k: v for k, v in raw.items() if not k.startswith(("head.", "fc_norm."))})
        state.setdefault("mask_token", torch.zeros(1, state["cls_token"].shape[-1]))
        return Checkpoint(state, CheckpointFormat("timm", timm_config), None)
    try:
        if family == "dinov3":
            config = timm_vit.config_from_timm_dinov3(timm_config, raw, source)
            state = timm_vit.timm_dinov3_to_official(raw)
        else:
            config = timm_vit.config_from_timm(timm_config, raw, source)
            state = timm_vit.timm_vit_to_official(raw, source)
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    return Checkpoint(state, CheckpointFormat("timm", timm_config, config["family"], path=source), config)


def _open_clip_checkpoint(raw: Mapping[str, Tensor], model_cfg: dict[str, Any] | None, path: Path,
                          weights: Path | None = None) -> Checkpoint:  # fmt: skip
    state = open_clip.visual_state(raw)
    try:
        config = open_clip.config_from_open_clip(state, model_cfg, path.name, str(path))
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    # a file we wrote says its architecture (the activation, which the weights and our file name may not say)
    written = _safetensors_config(weights or path)
    if written is not None and written.get("family") == "clip":
        config = {**config, "act_layer": written.get("act_layer", config["act_layer"])}
    source = CheckpointFormat("open_clip", family="clip", path=str(path))
    return Checkpoint(open_clip.open_clip_to_official(state), source, config)


def _open_clip_folder(path: Path) -> Checkpoint:
    weights = next((path / n for n in open_clip.WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no weights file ({', '.join(open_clip.WEIGHT_FILES)}) beside "
                              f"{open_clip.CONFIG_FILE}")
    return _open_clip_checkpoint(normalize_keys(read_state_dict(weights)), open_clip.read_model_cfg(path), path,
                                 weights)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a weights file or a checkpoint folder and convert it to official keys.

    One dispatch: a folder by its config (OpenCLIP's ``open_clip_config.json``; in ``config.json`` timm's
    ``architecture`` or transformers' ``model_type``), a file by its key names (and a timm ``config.json`` beside it).
    """

    path = Path(path)
    if path.is_dir() and (path / open_clip.CONFIG_FILE).is_file() and not (path / HF_CONFIG).is_file():
        return _open_clip_folder(path)
    if path.is_dir():
        hf_config, raw = read_hf_folder(path)
        if timm_vit.is_timm_config(hf_config):
            return _timm_checkpoint(hf_config, raw, str(path))
        config = config_from_hf(hf_config, str(path))
        state = hf_converter(hf_config)(raw)
        state.setdefault("mask_token", torch.zeros(1, config["embed_dim"]))
        family = config.get("family", "dinov2")
        source = CheckpointFormat("hf", hf_config, family, source_key_prefix(hf_config, raw),
                                  None if family == "dinov2" else str(path))
        return Checkpoint(state, source, config)
    raw = normalize_keys(read_state_dict(path))
    kind = detect_format(raw)
    if kind == "open_clip":
        return _open_clip_checkpoint(raw, open_clip.read_model_cfg(path.parent), path)
    sibling = _sibling_config(path)
    if sibling is not None and timm_vit.is_timm_config(sibling):
        return _timm_checkpoint(sibling, raw, str(path))
    if kind == "timm" and any(k.startswith(("norm_pre.", "attn_pool.")) or ".gamma_1" in k for k in raw):
        raise CheckpointError(f"{path} holds timm weights of a CLIP, SigLIP or DINOv3 ViT but no timm {HF_CONFIG} "
                              "lies beside it: pass the folder timm's save_pretrained wrote (its config.json names "
                              "the architecture)")
    if kind == "hf":
        sibling = path.parent / HF_CONFIG
        if not sibling.is_file():
            raise CheckpointError(
                f"{path} holds Hugging Face DINOv2 keys but no {HF_CONFIG} lies beside it: pass the folder "
                "save_pretrained wrote, or the architecture with the weights (--backbone LABEL=PRESET:PATH)"
            )
        hf_config = json.loads(sibling.read_text())
        config = config_from_hf(hf_config, str(sibling))
        state = hf_to_official(raw)
        state.setdefault("mask_token", torch.zeros(1, config["embed_dim"]))
        return Checkpoint(state, CheckpointFormat("hf", hf_config), config)
    state = timm_to_official(raw) if kind == "timm" else raw
    if "mask_token" not in state and "cls_token" in state:
        state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])  # unused at inference
    return Checkpoint(state, CheckpointFormat(kind), _safetensors_config(path))


def _sibling_config(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` beside a weights file, when there is a readable one."""
    config_path = path.parent / HF_CONFIG
    if not config_path.is_file():
        return None
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


# timm resizes position embeddings to the exact grid with antialiasing, for every DINOv2 (checked against timm 1.0).
TIMM_INTERPOLATION = {"interpolate_offset": 0.0, "interpolate_antialias": True}


def checkpoint_architecture(checkpoint: Checkpoint, source: str) -> dict[str, Any]:
    """The architecture a checkpoint describes: its own config, else read off its tensors."""
    if checkpoint.config is not None:
        return checkpoint.config
    config = infer_official_config(checkpoint.state, source)
    return {**config, **TIMM_INTERPOLATION} if checkpoint.format.kind == "timm" else config


# ------------------------------------------------------------------------------------------- writing
def source_key_prefix(hf_config: Mapping[str, Any], raw: Mapping[str, Tensor]) -> str:
    """The key prefix of a transformers folder of another family (``vision_model.`` or none), else ''."""
    return key_prefix(raw) if hf_config.get("model_type") in TRANSFORMERS_FAMILIES else ""


def _family_writer(kind: str, source: CheckpointFormat) -> tuple[str, str] | None:
    """The :data:`WRITERS` key that writes ``source`` back as ``kind``: a transformers folder by its
    ``model_type``, another family's timm or OpenCLIP checkpoint by family; None for DINOv2's own formats."""
    if kind == "hf":
        key = writer_key(kind, source.family, source.hf_config)
        return key if key in WRITERS else None
    return None if source.family == "dinov2" or kind == "official" else writer_key(kind, source.family, None)


def _folder_output(source: CheckpointFormat) -> bool:
    """Whether ``source``'s own format is a folder: transformers and timm folders, an OpenCLIP folder."""
    if source.family == "dinov2":
        return source.kind == "hf"
    return source.kind in ("hf", "timm") or (source.path is not None and Path(source.path).is_dir())


def check_save_format(save_format: str, source: CheckpointFormat, out: str | Path) -> str:
    """The concrete format (``official``, ``hf``, ``timm`` or ``open_clip``) of ``save_format`` (``official`` |
    ``source``), refused up front when that format cannot be written to ``out``."""
    if save_format not in ("official", "source"):
        raise ValueError(f"save format {save_format!r}: use 'official' or 'source'")
    kind = source.kind if save_format == "source" else "official"
    if kind == "official":
        return kind
    model_type = (source.hf_config or {}).get("model_type") if kind == "hf" else None
    writer = _family_writer(kind, source)
    if writer is None:  # DINOv2's formats
        if kind == "hf" and model_type not in DINOV2_MODEL_TYPES:
            raise ValueError(f"--save-format source: writing a {model_type!r} folder is not supported yet; "
                             "use --save-format official")
    elif writer not in WRITERS:
        raise ValueError(f"--save-format source: writing a {source.family} checkpoint in {kind} format is not "
                         "supported yet; use --save-format official")
    elif source.path is None and kind != "hf":
        raise ValueError(f"--save-format source: where the {source.family} checkpoint was read from is not known "
                         "(its untouched tensors are copied from there); use --save-format official")
    if _folder_output(source) and Path(out).suffix:
        what = {"hf": "Hugging Face", "timm": "timm", "open_clip": "OpenCLIP"}[kind]
        raise ValueError(
            f"--out {out}: the source format of this {what} checkpoint is a folder (its config and weights); give a "
            "folder name without a suffix, or use --save-format official"
        )
    if not _folder_output(source) and kind == "open_clip" and Path(out).suffix != ".safetensors":
        raise ValueError(f"--out {out}: an OpenCLIP weights file is written as .safetensors; name it so")
    return kind


def _source_raw(source: CheckpointFormat) -> dict[str, Tensor]:
    """The source checkpoint's state dict as :func:`read_checkpoint` read it, before conversion."""
    path = Path(str(source.path))
    if not path.exists():
        raise CheckpointError(f"the source checkpoint {path} is gone: its tensors that are not the backbone's are "
                              "copied from it into a --save-format source output; restore it or use "
                              "--save-format official")
    if source.kind == "open_clip" and path.is_dir():
        return normalize_keys(read_state_dict(next(path / n for n in open_clip.WEIGHT_FILES if (path / n).is_file())))
    return read_hf_folder(path)[1] if path.is_dir() else normalize_keys(read_state_dict(path))


def _save_source_family(state: Mapping[str, Tensor], out: Path, source: CheckpointFormat, *, force: bool,
                        metadata: Mapping[str, str]) -> str:  # fmt: skip
    """Write an other family's checkpoint in its source layout: the source's state dict with ours laid over it
    (a transformers folder of a known ``config.json`` without a source file: the family's keys alone)."""
    key = _family_writer(source.kind, source)
    if source.path is None and source.kind != "hf":
        raise ValueError(f"cannot write a {source.family} checkpoint in {source.kind} format without its source")
    raw = _source_raw(source) if source.path is not None else None
    written = source_state(state, raw, key, prefix=source.key_prefix)
    if not _folder_output(source):  # an OpenCLIP weights file
        return save_state_dict(written, out, force=force, metadata=metadata)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to overwrite it")
    src = Path(str(source.path)) if source.path is not None else None
    folder = None if src is None else src if src.is_dir() else src.parent
    if source.kind == "open_clip":
        sha = save_state_dict(written, out / open_clip.WEIGHT_FILES[0], force=True, metadata=metadata)
        atomic_write_text(out / open_clip.CONFIG_FILE, (folder / open_clip.CONFIG_FILE).read_text())
        return sha
    sha = save_state_dict(written, out / HF_WEIGHTS[0], force=True, metadata={**metadata, "format": "pt"})
    atomic_write_text(out / HF_CONFIG, json.dumps(source.hf_config, indent=2, sort_keys=True) + "\n")
    if folder is not None and (folder / PREPROCESSOR_CONFIG).is_file():  # the output is fed as the source was
        atomic_write_text(out / PREPROCESSOR_CONFIG, (folder / PREPROCESSOR_CONFIG).read_text())
    return sha


def save_checkpoint(
    state: Mapping[str, Tensor],
    out: str | Path,
    kind: str,
    *,
    config: Mapping[str, Any],
    source: CheckpointFormat = CheckpointFormat(),
    force: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write official-key ``state`` in format ``kind``; returns the sha256 of the weights file written.

    ``config`` (our architecture) goes into the safetensors metadata so the file loads alone; an ``hf`` output
    is a folder with the source's ``config.json`` and ``model.safetensors``. Another family's source format is
    its own layout (``sinder.models.source_format``): a transformers or timm folder, an OpenCLIP file or folder.
    """

    metadata = {**(metadata or {}), CONFIG_METADATA: json.dumps(dict(config), sort_keys=True)}
    out = Path(out)
    if kind == "official":
        return save_state_dict(state, out, force=force, metadata=metadata)
    if _family_writer(kind, source) is not None:
        return _save_source_family(state, out, source, force=force, metadata=metadata)
    if kind == "timm":
        return save_state_dict(official_to_timm(state), out, force=force, metadata=metadata)
    if kind != "hf" or source.hf_config is None:
        raise ValueError(f"cannot write format {kind!r} (source {source.kind!r})")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass force=True (--force) to overwrite it")
    hf_state = official_to_hf(state, source.hf_config)
    sha = save_state_dict(hf_state, out / HF_WEIGHTS[0], force=True, metadata={**metadata, "format": "pt"})
    atomic_write_text(out / HF_CONFIG, json.dumps(source.hf_config, indent=2, sort_keys=True) + "\n")
    return sha
