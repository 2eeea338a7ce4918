"""transformers' ``DINOv3ViTModel`` (``model_type`` ``dinov3_vit``) as our ViT.

The architecture (transformers 5.25 ``modeling_dinov3_vit``): a patch-embedding convolution with bias, a class
token then ``num_register_tokens`` registers before the patches, no position embeddings (RoPE on the patch tokens'
q/k in every block: our ``rope`` switch, ``sinder.models.vit.Rope2D``), pre-norm blocks with separate q/k/v
projections (``query_bias``/``key_bias``/``value_bias``; the key has no bias in the releases), LayerScale
(``layer_scale{1,2}.lambda1``), a GELU MLP (``up_proj``/``down_proj``) or, with ``use_gated_mlp``, a gated one
(``down_proj(act(gate_proj x) * up_proj x)``, SwiGLU with ``hidden_act`` ``silu``), LayerNorm eps 1e-5 and a final
``norm``; the pooled feature is the normed class token. The converter fuses q/k/v into ``attn.qkv`` (a missing bias
is zero), packs a gated MLP as ``w12 = [gate; up]``, ``w3 = down`` (our SwiGLU computes ``w3(silu(x1) * x2)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from sinder.models.families.transformers_encoder import mlp_ratio

MODEL_TYPES = ("dinov3_vit",)
_QKV = ("q", "k", "v")

# Our block names -> DINOv3ViTModel's (``blocks.N.`` / ``layer.N.`` relative), both directions; q/k/v and a gated
# MLP's w12 (gate_proj + up_proj) are split or joined apart.
_PARAMS = (".weight", ".bias")
_LAYER_SCALE = {"ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}


def _renames(gated: bool) -> dict[str, str]:
    mlp = {"mlp.w3": "mlp.down_proj"} if gated else {"mlp.fc1": "mlp.up_proj", "mlp.fc2": "mlp.down_proj"}
    return {"attn.proj": "attention.o_proj", "norm1": "norm1", "norm2": "norm2", **mlp}



def _square(value: Any, what: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{source}: non-square {what} {list(value)} is not supported")
        value = value[0]
    return int(value)


def config_from_dinov3(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our architecture dict for a ``DINOv3ViTConfig`` (a ``config.json`` as ``save_pretrained`` writes it)."""
    # Defaults are DINOv3ViTConfig's (transformers 5.25) for keys a config.json leaves out.
    dim, hidden = int(hf.get("hidden_size", 384)), int(hf.get("intermediate_size", 1536))
    gated, act = bool(hf.get("use_gated_mlp", False)), hf.get("hidden_act", "gelu")
    if act != ("silu" if gated else "gelu"):
        want = "'silu' with use_gated_mlp (SwiGLU)" if gated else "'gelu' without use_gated_mlp"
        raise ValueError(f"{source}: hidden_act {act!r} is not supported for DINOv3; supported: {want}")
    biases = [bool(hf.get(f"{x}_bias", default)) for x, default in (("query", True), ("key", False), ("value", True))]
    return {
        "family": "dinov3",
        "img_size": _square(hf.get("image_size", 224), "image_size", source),
        "patch_size": _square(hf.get("patch_size", 16), "patch_size", source),
        "in_chans": int(hf.get("num_channels", 3)),
        "embed_dim": dim,
        "depth": int(hf.get("num_hidden_layers", 12)),
        "num_heads": int(hf.get("num_attention_heads", 6)),
        "mlp_ratio": mlp_ratio(dim, hidden, source),
        "qkv_bias": any(biases),
        "proj_bias": bool(hf.get("proj_bias", True)),
        "ffn_bias": bool(hf.get("mlp_bias", True)),
        "init_values": 1.0,  # LayerScale is always there; its values come from the file
        "ffn_layer": "swiglu_exact" if gated else "mlp",
        "act_layer": "gelu",
        "norm_eps": float(hf.get("layer_norm_eps", 1e-5)),
        "num_register_tokens": int(hf.get("num_register_tokens", 0)),
        "pos_embed": False,
        "rope": True,
        "rope_theta": float(hf.get("rope_theta", 100.0)),
    }


def _strip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # A DINOv3ViTBackbone or a model nesting the tower may add a prefix before "embeddings."
    prefixes = {k[: k.index("embeddings.")] for k in state if k.endswith("embeddings.cls_token")}
    prefix = prefixes.pop() if len(prefixes) == 1 else ""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # save_pretrained writes the blocks as "layer.N." (the hub releases too); the module path is "model.layer.N."
    return {k.removeprefix("model."): v for k, v in state.items()}


def dinov3_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers DINOv3 state dict in our ViT's keys."""
    state = _strip(state)
    cls = state["embeddings.cls_token"]
    dim = cls.shape[-1]
    out: dict[str, Tensor] = {
        "cls_token": cls.reshape(1, 1, dim),
        "mask_token": state["embeddings.mask_token"].reshape(1, dim),
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.weight"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    if "embeddings.patch_embeddings.bias" in state:
        out["patch_embed.proj.bias"] = state["embeddings.patch_embeddings.bias"]
    registers = state.get("embeddings.register_tokens")
    if registers is not None and registers.shape[1]:
        out["register_tokens"] = registers
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("layer.")})
    for i in layers:
        src, dst = f"layer.{i}.", f"blocks.{i}."
        weights = [state[f"{src}attention.{x}_proj.weight"] for x in _QKV]
        out[f"{dst}attn.qkv.weight"] = torch.cat(weights)
        biases = [state.get(f"{src}attention.{x}_proj.bias") for x in _QKV]
        if any(b is not None for b in biases):  # the key projection has no bias in the releases: zero
            out[f"{dst}attn.qkv.bias"] = torch.cat([b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype)
                                                    for b, w in zip(biases, weights)])  # fmt: skip
        gated = f"{src}mlp.gate_proj.weight" in state
        if gated:
            for p in ("weight", "bias"):
                if f"{src}mlp.gate_proj.{p}" in state:
                    out[f"{dst}mlp.w12.{p}"] = torch.cat([state[f"{src}mlp.gate_proj.{p}"], state[f"{src}mlp.up_proj.{p}"]])
        for ours, theirs in _renames(gated).items():
            for p in _PARAMS:
                if f"{src}{theirs}{p}" in state:
                    out[f"{dst}{ours}{p}"] = state[f"{src}{theirs}{p}"]
        out.update({f"{dst}{ours}": state[f"{src}{theirs}"] for ours, theirs in _LAYER_SCALE.items()})
    return out


def official_to_dinov3(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ViT's keys back to a ``DINOv3ViTModel``'s as ``save_pretrained`` writes them (``layer.N.``; q/k/v split,
    a gated MLP's ``w12`` as ``gate_proj``/``up_proj``). A bias the source has not (the key's, in the releases)
    comes out as zeros, which the writer drops (``sinder.models.source_format``)."""
    out: dict[str, Tensor] = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"].reshape(1, 1, -1),
        "embeddings.patch_embeddings.weight": state["patch_embed.proj.weight"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    if "patch_embed.proj.bias" in state:
        out["embeddings.patch_embeddings.bias"] = state["patch_embed.proj.bias"]
    if "register_tokens" in state:
        out["embeddings.register_tokens"] = state["register_tokens"]
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    for i in layers:
        src, dst = f"blocks.{i}.", f"layer.{i}."
        for p in ("weight", "bias"):
            if f"{src}attn.qkv.{p}" in state:
                for x, part in zip(_QKV, state[f"{src}attn.qkv.{p}"].chunk(3, dim=0)):
                    out[f"{dst}attention.{x}_proj.{p}"] = part.clone()
        gated = f"{src}mlp.w12.weight" in state
        if gated:
            for p in ("weight", "bias"):
                if f"{src}mlp.w12.{p}" in state:
                    gate, up = state[f"{src}mlp.w12.{p}"].chunk(2, dim=0)
                    out[f"{dst}mlp.gate_proj.{p}"], out[f"{dst}mlp.up_proj.{p}"] = gate.clone(), up.clone()
        for ours, theirs in _renames(gated).items():
            for p in _PARAMS:
                if f"{src}{ours}{p}" in state:
                    out[f"{dst}{theirs}{p}"] = state[f"{src}{ours}{p}"]
        out.update({f"{dst}{theirs}": state[f"{src}{ours}"] for ours, theirs in _LAYER_SCALE.items()})
    return out


def source_names(raw_keys) -> dict[str, str]:
    """The source's key for each key of :func:`official_to_dinov3`'s naming (a prefix and ``model.`` undone)."""
    return _strip({key: key for key in raw_keys})
