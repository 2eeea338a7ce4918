"""transformers' ``SiglipVisionModel`` (``model_type`` ``siglip_vision_model``; SigLIP 2's fixed-resolution
towers use the same classes) as our ViT.

The architecture (transformers ``modeling_siglip``): patch embedding with bias, learned position embeddings for
the patches only (no class token; bicubic resize to the grid, no offset, no antialias: ``interpolate_pos_encoding``),
pre-norm blocks with separate q/k/v projections, no LayerScale, an MLP with ``hidden_act`` (``gelu_pytorch_tanh``),
``post_layernorm`` on every token, and the pooled feature from an attention-pooling head (a learned probe attends
over the normed tokens, then LayerNorm + MLP with a residual). The converter fuses q/k/v into ``attn.qkv`` and maps
``post_layernorm`` to ``norm`` and ``head`` to ``attn_pool`` (same inner names).
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

MODEL_TYPES = ("siglip_vision_model",)


def config_from_siglip(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our architecture dict for a ``SiglipVisionConfig`` (a ``config.json`` as ``save_pretrained`` writes it)."""
    config = encoder_config(hf, source, family="siglip", patch_size=16, act="gelu_pytorch_tanh", eps=1e-6)
    return {**config, "class_token": False, "attn_pool": bool(hf.get("vision_use_head", True))}


def siglip_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers SigLIP vision state dict (with or without ``vision_model.``) in our ViT's keys."""
    state = strip_prefix(state)
    pos = state["embeddings.position_embedding.weight"]
    out: dict[str, Tensor] = {
        "pos_embed": pos.unsqueeze(0),
        "patch_embed.proj.weight": state["embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embedding.bias"],
        "mask_token": torch.zeros(1, pos.shape[-1], dtype=pos.dtype),  # unused at inference
        "norm.weight": state["post_layernorm.weight"],
        "norm.bias": state["post_layernorm.bias"],
    }
    out.update({f"attn_pool.{k[len('head.'):]}": v for k, v in state.items() if k.startswith("head.")})
    out.update(block_keys(state))
    return out


def official_to_siglip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ViT's keys back to a ``SiglipVisionModel``'s (without the ``vision_model.`` prefix; q/k/v split,
    ``attn_pool`` as ``head``); the mask token, which SigLIP has not, is dropped."""
    out: dict[str, Tensor] = {
        "embeddings.position_embedding.weight": state["pos_embed"][0],
        "embeddings.patch_embedding.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": state["patch_embed.proj.bias"],
        "post_layernorm.weight": state["norm.weight"],
        "post_layernorm.bias": state["norm.bias"],
    }
    out.update({f"head.{k[len('attn_pool.'):]}": v for k, v in state.items() if k.startswith("attn_pool.")})
    out.update(official_block_keys(state))
    return out
