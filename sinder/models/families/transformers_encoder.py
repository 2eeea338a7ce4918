"""What transformers' CLIP-style vision encoders share (CLIP, SigLIP): the config fields of the encoder and the
block keys (``encoder.layers.N.`` with separate q/k/v projections), in our ViT's terms. Each family module adds
only what is its own (class token, pre-norm, pooling head, defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

PREFIX = "vision_model."


def strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A vision tower's state dict without ``vision_model.`` (a full model's vision part, or the tower alone)."""
    return {(k[len(PREFIX) :] if k.startswith(PREFIX) else k): v for k, v in state.items()}


def encoder_config(hf: Mapping[str, Any], source: str, *, family: str, patch_size: int, act: str,
                   eps: float) -> dict[str, Any]:  # fmt: skip
    """Our architecture dict for the encoder part of a transformers vision config; ``patch_size``, ``act`` and
    ``eps`` are the family's defaults for keys the config leaves out."""
    from sinder.models.vit import ACTIVATIONS

    dim, hidden = int(hf.get("hidden_size", 768)), int(hf.get("intermediate_size", 3072))
    act = hf.get("hidden_act", act)
    if act not in ACTIVATIONS:
        raise ValueError(f"{source}: hidden_act {act!r} is not supported; known: {sorted(ACTIVATIONS)}")
    return {
        "family": family,
        "img_size": int(hf.get("image_size", 224)),
        "patch_size": int(hf.get("patch_size", patch_size)),
        "in_chans": int(hf.get("num_channels", 3)),
        "embed_dim": dim,
        "depth": int(hf.get("num_hidden_layers", 12)),
        "num_heads": int(hf.get("num_attention_heads", 12)),
        "mlp_ratio": mlp_ratio(dim, hidden, source),
        "init_values": 0.0,  # no LayerScale
        "ffn_layer": "mlp",
        "act_layer": act,
        "norm_eps": float(hf.get("layer_norm_eps", eps)),
        "num_register_tokens": 0,
        # interpolate_pos_encoding: bicubic resize to the grid, no offset, no antialias
        "interpolate_antialias": False,
        "interpolate_offset": 0.0,
    }


def mlp_ratio(dim: int, hidden: int, source: str) -> float:
    """Our ``mlp_ratio`` for transformers' ``intermediate_size`` (the ViT builds ``int(dim * ratio)`` units)."""
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ValueError(
            f"{source}: intermediate_size {hidden} is not expressible as hidden_size {dim} x a ratio"
        )
    return ratio


# Our block parameter names and transformers' (``encoder.layers.N.`` relative), besides the fused q/k/v.
BLOCK_NAMES = (("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
               ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))  # fmt: skip


def _layers(state: Mapping[str, Tensor], prefix: str, index_at: int) -> list[int]:
    return sorted({int(k.split(".")[index_at]) for k in state if k.startswith(prefix)})


def block_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The encoder blocks of a transformers CLIP-style encoder (``encoder.layers.N.``) in our ViT's keys."""
    out: dict[str, Tensor] = {}
    for i in _layers(state, "encoder.layers.", 2):
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.qkv.{p}"] = torch.cat([state[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"])
            out.update({f"{dst}{ours}.{p}": state[f"{src}{theirs}.{p}"] for ours, theirs in BLOCK_NAMES})
    return out


def official_block_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`block_keys`: our ``blocks.N.`` keys as ``encoder.layers.N.`` with q/k/v split."""
    out: dict[str, Tensor] = {}
    for i in _layers(state, "blocks.", 1):
        src, dst = f"blocks.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            for x, part in zip("qkv", state[f"{src}attn.qkv.{p}"].chunk(3, dim=0)):
                out[f"{dst}self_attn.{x}_proj.{p}"] = part.clone()
            out.update({f"{dst}{theirs}.{p}": state[f"{src}{ours}.{p}"] for ours, theirs in BLOCK_NAMES})
    return out


def key_prefix(state: Mapping[str, Tensor]) -> str:
    """The prefix a transformers vision tower's keys came with: ``vision_model.`` (transformers 4 and full models
    saved it), or none (transformers 5 saves the tower's own keys)."""
    return PREFIX if any(k.startswith(PREFIX) for k in state) else ""
