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

from sinder.models.families.transformers_encoder import (
    block_keys,
    encoder_config,
    official_block_keys,
    strip_prefix,
)

MODEL_TYPES = ("clip_vision_model",)


def config_from_clip(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our architecture dict for a ``CLIPVisionConfig`` (a ``config.json`` as ``save_pretrained`` writes it)."""
    config = encoder_config(hf, source, family="clip", patch_size=32, act="quick_gelu", eps=1e-5)
    return {**config, "pre_norm": True, "patch_bias": False}


def clip_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers CLIP vision state dict (with or without ``vision_model.``) in our ViT's keys."""
    state = strip_prefix(state)
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


def official_to_clip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ViT's keys back to a ``CLIPVisionModel``'s (without the ``vision_model.`` prefix; q/k/v split). The
    patch embedding's bias and the mask token, which CLIP has not, are dropped."""
    out: dict[str, Tensor] = {
        "embeddings.class_embedding": state["cls_token"].reshape(-1),
        "embeddings.position_embedding.weight": state["pos_embed"][0],
        "embeddings.patch_embedding.weight": state["patch_embed.proj.weight"],
    }
    for ours, theirs in (("norm_pre", "pre_layrnorm"), ("norm", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = state[f"{ours}.{p}"]
    out.update(official_block_keys(state))
    return out
