"""transformers' ``CLIPVisionModel`` (``model_type`` ``clip_vision_model``) as our ViT.

The architecture (transformers ``modeling_clip``): patch embedding without bias, a class embedding, learned
position embeddings (bicubic resize to the grid, no offset, no antialias: ``interpolate_pos_encoding``), a
LayerNorm after the embeddings (``pre_layrnorm``), pre-norm blocks with separate q/k/v projections, no LayerScale,
an MLP with ``hidden_act`` (``quick_gelu`` for OpenAI CLIP), and ``post_layernorm`` on the pooled class token only.
The converter fuses q/k/v into our ``attn.qkv`` (rows q, k, v), maps ``post_layernorm`` to ``norm`` and gives the
patch embedding a zero bias.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

MODEL_TYPES = ("clip_vision_model",)
_PREFIX = "vision_model."


def config_from_clip(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our architecture dict for a ``CLIPVisionConfig`` (a ``config.json`` as ``save_pretrained`` writes it)."""
    from sinder.models.vit import ACTIVATIONS

    dim, hidden = int(hf.get("hidden_size", 768)), int(hf.get("intermediate_size", 3072))
    act = hf.get("hidden_act", "quick_gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"{source}: hidden_act {act!r} is not supported; known: {sorted(ACTIVATIONS)}")
    return {
        "family": "clip",
        "img_size": int(hf.get("image_size", 224)),
        "patch_size": int(hf.get("patch_size", 32)),
        "in_chans": int(hf.get("num_channels", 3)),
        "embed_dim": dim,
        "depth": int(hf.get("num_hidden_layers", 12)),
        "num_heads": int(hf.get("num_attention_heads", 12)),
        "mlp_ratio": mlp_ratio(dim, hidden, source),
        "init_values": 0.0,  # no LayerScale
        "ffn_layer": "mlp",
        "act_layer": act,
        "norm_eps": float(hf.get("layer_norm_eps", 1e-5)),
        "pre_norm": True,
        "patch_bias": False,
        "num_register_tokens": 0,
        "interpolate_antialias": False,
        "interpolate_offset": 0.0,
    }


def clip_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers CLIP vision state dict (with or without ``vision_model.``) in our ViT's keys."""
    state = {(k[len(_PREFIX):] if k.startswith(_PREFIX) else k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    cls = state["embeddings.class_embedding"]
    out["cls_token"] = cls.reshape(1, 1, -1)
    out["pos_embed"] = state["embeddings.position_embedding.weight"].unsqueeze(0)
    out["patch_embed.proj.weight"] = state["embeddings.patch_embedding.weight"]
    out["mask_token"] = torch.zeros(1, cls.shape[-1], dtype=cls.dtype)  # unused at inference
    for ours, theirs in (("norm_pre", "pre_layrnorm"), ("norm", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = state[f"{theirs}.{p}"]
    out.update(block_keys(state))
    return out


def mlp_ratio(dim: int, hidden: int, source: str) -> float:
    """Our ``mlp_ratio`` for transformers' ``intermediate_size`` (the ViT builds ``int(dim * ratio)`` units)."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ValueError(f"{source}: intermediate_size {hidden} is not expressible as hidden_size {dim} x a ratio")
    return ratio


def block_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The encoder blocks of a transformers CLIP-style encoder (``encoder.layers.N.``) in our ViT's keys."""
    out: dict[str, Tensor] = {}
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.qkv.{p}"] = torch.cat([state[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
            out[f"{dst}attn.proj.{p}"] = state[f"{src}self_attn.out_proj.{p}"]
            out[f"{dst}norm1.{p}"] = state[f"{src}layer_norm1.{p}"]
            out[f"{dst}norm2.{p}"] = state[f"{src}layer_norm2.{p}"]
            out[f"{dst}mlp.fc1.{p}"] = state[f"{src}mlp.fc1.{p}"]
            out[f"{dst}mlp.fc2.{p}"] = state[f"{src}mlp.fc2.{p}"]
    return out
