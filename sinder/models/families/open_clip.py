"""OpenCLIP's own checkpoint layout (``visual.conv1``, ``visual.class_embedding``, ``visual.positional_embedding``,
``visual.ln_pre``, ``visual.transformer.resblocks.N.{ln_1,attn.in_proj_*,attn.out_proj,ls_1,ln_2,mlp.c_fc,
mlp.c_proj,ls_2}``, ``visual.ln_post``, ``visual.proj``) of its ViT image towers, as our ViT (family ``clip``).

The architecture (open_clip 3.x ``transformer.VisionTransformer``, ``model._build_vision_tower``): patch conv
without bias, class embedding, learned positions (class + grid), ``ln_pre``, pre-norm blocks with a fused q/k/v
``nn.MultiheadAttention`` (rows q, k, v: our ``attn.qkv``), optional LayerScale (``ls_1``/``ls_2``), MLP
``c_fc``/``c_proj``, LayerNorm eps 1e-5, ``ln_post`` and the class token pooled (``pool_type='tok'``) before the
projection ``proj`` (not part of the backbone: the pooled feature is the ``ln_post`` class token). Heads are
``width // head_width`` (``head_width`` 64 unless the model config says otherwise).

The activation is not in the weights: open_clip takes it from the model config (``quick_gelu``; the OpenAI weights
and every ``*-quickgelu`` model use QuickGELU, the rest GELU). The rule here, in order: ``quick_gelu`` in an
``open_clip_config.json`` beside the weights (``model_cfg``, as open_clip's hub folders ship it), else the file or
folder name containing ``quickgelu`` or ``openai`` (open_clip's model and pretrained-tag names), else GELU.
open_clip does not resize position embeddings in its forward; here they resize as its ``resize_pos_embed`` does on
loading at another size (bicubic, antialiased, to the exact grid).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sinder.models.families.transformers_encoder import mlp_ratio

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
ACTIVATION_WORDS = ("quickgelu", "openai")
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_RENAMES = {"ln_1": "norm1", "ln_2": "norm2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2"}  # fmt: skip


def is_open_clip_state(state: Mapping[str, Tensor]) -> bool:
    """OpenCLIP's keys: a full CLIP model (``visual.``) or its image tower alone."""
    return any(k.startswith(("visual.transformer.resblocks.", "transformer.resblocks.")) for k in state) and any(
        k in state for k in ("visual.conv1.weight", "conv1.weight"))


def visual_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The image tower's tensors without ``visual.`` (the text tower of a full model is dropped)."""
    if "visual.conv1.weight" in state:
        return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return dict(state)


def quick_gelu(model_cfg: Mapping[str, Any] | None, name: str) -> bool:
    """open_clip's activation rule (see the module docstring): the config's ``quick_gelu``, else the name."""
    if model_cfg is not None and "quick_gelu" in model_cfg:
        return bool(model_cfg["quick_gelu"])
    return any(word in name.lower() for word in ACTIVATION_WORDS)


def config_from_open_clip(state: Mapping[str, Tensor], model_cfg: Mapping[str, Any] | None, name: str,
                          source: str) -> dict[str, Any]:  # fmt: skip
    """Our architecture dict for an OpenCLIP image tower (``state`` from :func:`visual_state`)."""
    vision = dict((model_cfg or {}).get("vision_cfg") or {})
    unsupported = [k for k in ("attentional_pool", "no_ln_pre", "final_ln_after_pool", "qk_norm", "scale_attn",
                               "scale_fc", "scaled_cosine_attn") if vision.get(k)]  # fmt: skip
    if vision.get("pool_type", "tok") != "tok":
        unsupported.append(f"pool_type={vision['pool_type']!r}")
    if vision.get("timm_model_name"):
        unsupported.append(f"timm_model_name={vision['timm_model_name']!r} (load the timm tower instead)")
    if unsupported or "ln_pre.weight" not in state:
        raise ValueError(f"{source}: this OpenCLIP image tower is not supported ({', '.join(unsupported) or 'no ln_pre'}); "
                         "supported: ViT towers with class-token pooling, as open_clip's ViT-* models")
    patch = state["conv1.weight"]
    dim = int(patch.shape[0])
    head_width = int(vision.get("head_width", 64))
    if dim % head_width:
        raise ValueError(f"{source}: width {dim} is not a multiple of head_width {head_width}")
    positions = int(state["positional_embedding"].shape[0]) - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"{source}: {positions} patch positions is not a square grid")
    return {
        "family": "clip",
        "img_size": side * int(patch.shape[-1]),
        "patch_size": int(patch.shape[-1]),
        "in_chans": int(patch.shape[1]),
        "embed_dim": dim,
        "depth": 1 + max(int(m.group(1)) for k in state if (m := _BLOCK.match(k))),
        "num_heads": dim // head_width,
        "mlp_ratio": mlp_ratio(dim, int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]), source),
        "init_values": 1.0 if "transformer.resblocks.0.ls_1.gamma" in state else 0.0,
        "ffn_layer": "mlp",
        "act_layer": "quick_gelu" if quick_gelu(model_cfg, name) else "gelu",
        "norm_eps": 1e-5,  # open_clip's LayerNorm default
        "num_register_tokens": 0,
        "pre_norm": True,
        "patch_bias": "conv1.bias" in state,
        # open_clip's resize_pos_embed: bicubic, antialias=True, to the exact grid
        "interpolate_antialias": True,
        "interpolate_offset": 0.0,
    }


def open_clip_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An OpenCLIP image tower (``state`` from :func:`visual_state`) in our ViT's keys."""
    cls = state["class_embedding"]
    dim = cls.shape[-1]
    out: dict[str, Tensor] = {
        "cls_token": cls.reshape(1, 1, dim),
        "pos_embed": state["positional_embedding"].unsqueeze(0),
        "patch_embed.proj.weight": state["conv1.weight"],
        "mask_token": torch.zeros(1, dim, dtype=cls.dtype),  # unused at inference
    }
    if "conv1.bias" in state:
        out["patch_embed.proj.bias"] = state["conv1.bias"]
    for p in ("weight", "bias"):
        out[f"norm_pre.{p}"] = state[f"ln_pre.{p}"]
        out[f"norm.{p}"] = state[f"ln_post.{p}"]
    for key, value in state.items():
        match = _BLOCK.match(key)
        if not match:
            continue  # proj (the projection to the joint space) and anything outside the blocks
        layer, rest = match.groups()
        module, _, param = rest.rpartition(".")
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            out[f"blocks.{layer}.attn.qkv.{rest.rsplit('_', 1)[1]}"] = value
        elif module in ("ls_1", "ls_2"):
            out[f"blocks.{layer}.ls{module[-1]}.gamma"] = value
        elif module in _RENAMES:
            out[f"blocks.{layer}.{_RENAMES[module]}.{param}"] = value
        else:
            out[f"blocks.{layer}.{rest}"] = value  # reported by the strict load as unexpected
    return out


def read_model_cfg(folder: Path) -> dict[str, Any] | None:
    """``model_cfg`` of an ``open_clip_config.json`` in ``folder`` (None when there is none)."""
    import json

    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    return dict(data.get("model_cfg") or {})


def official_to_open_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ViT's keys back to OpenCLIP's image tower (without ``visual.``; the inverse of
    :func:`open_clip_to_official`). ``proj`` is not ours: the writer carries it over from the source."""
    out: dict[str, Tensor] = {
        "class_embedding": state["cls_token"].reshape(-1),
        "positional_embedding": state["pos_embed"][0],
        "conv1.weight": state["patch_embed.proj.weight"],
    }
    if "patch_embed.proj.bias" in state:
        out["conv1.bias"] = state["patch_embed.proj.bias"]
    for p in ("weight", "bias"):
        out[f"ln_pre.{p}"] = state[f"norm_pre.{p}"]
        out[f"ln_post.{p}"] = state[f"norm.{p}"]
    theirs = {v: k for k, v in _RENAMES.items()}
    for key, value in state.items():
        match = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if not match:
            continue
        layer, module, param = match.groups()
        dst = f"transformer.resblocks.{layer}."
        if module == "attn.qkv":
            out[f"{dst}attn.in_proj_{param}"] = value
        elif module in ("ls1", "ls2"):
            out[f"{dst}ls_{module[-1]}.gamma"] = value
        elif module in theirs:
            out[f"{dst}{theirs[module]}.{param}"] = value
    return out
