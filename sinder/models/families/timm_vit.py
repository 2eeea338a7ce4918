"""timm's ``VisionTransformer`` checkpoints (a folder or a weights file beside ``config.json`` as timm's
``save_pretrained`` / ``push_to_hub`` write them: ``architecture``, ``model_args``, ``pretrained_cfg``, and
``model.safetensors``) of the CLIP (``*_clip_*``), SigLIP (``*_siglip_*``) and DeiT-III (``deit3_*``) families,
and timm's plain ``vit_*`` ViTs (family ``vit``: ``vit_*_gap_*`` and the other ``VisionTransformer`` defs with
pre-norm blocks).

timm's keys are already ours for the most part (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``norm_pre``,
``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``). The architecture is
read off the tensors (width, depth, MLP width, patch size, class/register tokens, pre-norm, LayerScale, biases,
attention pool), the head count from ``model_args`` or else the width (timm's defs), and what the weights cannot
say from the architecture name as timm's defs set it (timm 1.0 ``vision_transformer.py``, ``deit.py``):

- ``*_clip_*``: ``pre_norm=True`` (no patch bias), LayerNorm eps 1e-5, QuickGELU for ``*_quickgelu_*`` (OpenAI
  weights) or ``act_layer='quick_gelu'`` in ``model_args``, else exact GELU; pooled feature: the normed class token
  (timm's ``head``, CLIP's projection, is not part of the backbone).
- ``*_siglip_*``: no class token, ``global_pool='map'`` (the attention pool ``attn_pool``: latent probe, q and kv
  projections, proj, norm, MLP), exact GELU (timm's default), eps 1e-6.
- ``deit3_*``: class token, LayerScale, exact GELU, eps 1e-6, ``no_embed_class=True``: position embeddings on the
  patches only, the class token gets none (we give it a zero position).
- ``vit_*`` (no family word): timm's ``VisionTransformer`` defaults, exact GELU, eps 1e-6. ``vit_*_rpn_*``
  (``ResPostBlock``: norms after attention/MLP, same key names) is refused.

Pooling (``global_pool`` in ``model_args``, else at the top of ``config.json``): ``'token'`` (class token),
``'map'`` (attention pool) or ``'avg'``: timm's ``global_pool_nlc`` takes the mean of the tokens after the
``num_prefix_tokens`` class/register tokens, and ``forward_head`` applies ``fc_norm`` to it. timm's ``fc_norm``
(``None`` by default: on for ``global_pool`` in ``('avg', 'avgmax', 'max')``) replaces the final ``norm`` (then an
Identity, so ``forward_features`` returns the un-normed last block); ``vit_*_gap_*`` defs pass ``fc_norm=False``
and keep ``norm`` (timm 1.0.31 ``vision_transformer.py``: ``VisionTransformer.__init__``, ``pool``,
``forward_head``). Whether ``fc_norm`` is there is read off the tensors (``fc_norm.weight``).

Position embeddings resize as timm's ``resample_abs_pos_embed`` does (``dynamic_img_size``): bicubic with
antialiasing to the exact grid. Positions of class/register tokens, when timm has them, are constants folded into
those tokens. timm's DINOv2 files go through ``sinder.models.formats`` (``timm_to_official``).

timm's DINOv3 (``vit_*_dinov3*``, timm's ``Eva`` class, ``eva.py``): class token + ``reg_token`` registers, no
position embeddings (RoPE, ``rope_type='dinov3'``, base ``rope_temperature`` 100), fused ``attn.qkv`` without bias
plus ``q_bias``/``v_bias`` for the ``*_qkvb`` variants, LayerScale as ``gamma_1``/``gamma_2``, a GELU MLP or
SwiGLU (``mlp.fc1_g``/``fc1_x``/``fc2``: ``fc2(silu(fc1_g x) * fc1_x x)``), LayerNorm eps 1e-5. Our pooled feature
is the normed class token (upstream DINOv3's; timm's own default ``global_pool`` for these is ``'avg'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from sinder.models.families.transformers_encoder import mlp_ratio

# Architecture-name words -> family, in the order they are tested (a name like vit_so400m_patch14_siglip_224).
FAMILY_WORDS = (("siglip", "siglip"), ("clip", "clip"), ("deit3", "deit3"))
# timm's heads per width for the sizes its defs use (tiny .. gigantic, so400m): 64-wide heads up to base, 16 above.
HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1664: 16}
POOLS = ("token", "map", "avg")  # timm's global_pool values we represent ('avgmax', 'max', 'prr', '' are not)
# Heads per width in timm's DINOv3 defs (eva.py: small/small_plus, base, large, huge_plus, 7b).
DINOV3_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 20, 4096: 32}


class TimmError(ValueError):
    """A timm checkpoint this loader does not represent (the message names what is supported)."""


def is_timm_config(config: Mapping[str, Any]) -> bool:
    """A timm ``config.json`` (``architecture`` names the model), not a transformers one (``model_type``)."""
    return "architecture" in config and "model_type" not in config


def timm_family(architecture: str) -> str | None:
    """``clip``/``siglip``/``deit3``/``dinov2``/``dinov3`` from a timm architecture name, ``vit`` for another
    ``vit_*`` (timm's plain ``VisionTransformer``); None for others."""
    name = architecture.split(".")[0]
    if "dinov3" in name:
        return "dinov3"
    if "dinov2" in name:
        return "dinov2"
    family = next((family for word, family in FAMILY_WORDS if word in name.split("_")), None)
    if family is None and name.startswith("vit_") and "rpn" not in name.split("_"):
        return "vit"
    return family


def _unsupported(architecture: str, source: str) -> TimmError:
    return TimmError(f"{source}: timm architecture {architecture!r} is not supported; supported: vit_*_clip_* "
                     "(incl. *_clip_quickgelu_*), vit_*_siglip_* (attention pool), deit3_*, vit_*_dinov2*, "
                     "vit_*_dinov3*, other vit_* VisionTransformers (e.g. vit_*_gap_*; not vit_*_rpn_*)")


def config_from_timm(timm_config: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """Our architecture dict for a timm ``VisionTransformer`` of the CLIP, SigLIP, DeiT-III or plain ViT family."""
    architecture = str(timm_config.get("architecture", ""))
    family = timm_family(architecture)
    if family not in ("clip", "siglip", "deit3", "vit"):
        raise _unsupported(architecture, source)
    args = dict(timm_config.get("model_args") or {})
    pool = args.get("global_pool", timm_config.get("global_pool", "map" if family == "siglip" else "token"))
    fc_norm = "fc_norm.weight" in state
    if pool not in POOLS or (fc_norm and pool != "avg"):
        raise TimmError(f"{source}: global_pool {pool!r}{' with fc_norm' if fc_norm and pool in POOLS else ''} is "
                        f"not supported; supported: {', '.join(map(repr, POOLS))} (class token, attention pool, "
                        "mean of the patch tokens with or without fc_norm)")
    if "blocks.0.attn.q_norm.weight" in state:
        raise TimmError(f"{source}: qk_norm blocks are not supported (timm {architecture!r})")
    missing = [k for k in ("norm.weight" if not fc_norm else "fc_norm.weight", "blocks.0.norm1.bias",
                           "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight") if k not in state]  # fmt: skip
    if missing:  # a final_norm=False model, RmsNorm, parallel or SwiGLU blocks: not our block anatomy
        raise TimmError(f"{source}: timm {architecture!r} has no {', '.join(missing)}: only pre-norm LayerNorm "
                        "blocks with a fused qkv and a fc1/fc2 MLP, and a final norm (or fc_norm), are supported")
    patch = state["patch_embed.proj.weight"]
    dim, depth = int(patch.shape[0]), 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = _heads(args, dim, HEADS_BY_WIDTH, source)
    act = args.get("act_layer") or ("quick_gelu" if family == "clip" and "quickgelu" in architecture else "gelu")
    if act not in ("gelu", "quick_gelu"):
        raise TimmError(f"{source}: act_layer {act!r} is not supported; supported: 'gelu', 'quick_gelu'")
    registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    side = _grid_side(state, source)
    return {
        "family": family,
        "img_size": side * int(patch.shape[-1]),
        "patch_size": int(patch.shape[-1]),
        "in_chans": int(patch.shape[1]),
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": mlp_ratio(dim, int(state["blocks.0.mlp.fc1.weight"].shape[0]), source),
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "proj_bias": "blocks.0.attn.proj.bias" in state,
        "ffn_bias": "blocks.0.mlp.fc1.bias" in state,
        "init_values": 1.0 if "blocks.0.ls1.gamma" in state else 0.0,  # LayerScale values come from the file
        "ffn_layer": "mlp",
        "act_layer": act,
        "norm_eps": 1e-5 if family == "clip" else 1e-6,  # timm's clip defs: LayerNorm eps 1e-5; its default 1e-6
        "num_register_tokens": registers,
        "pre_norm": "norm_pre.weight" in state,
        "patch_bias": "patch_embed.proj.bias" in state,
        "class_token": "cls_token" in state,
        "attn_pool": "attn_pool.latent" in state,
        "avg_pool": pool == "avg",
        "fc_norm": fc_norm,
        # resample_abs_pos_embed: bicubic, antialias=True, to the exact grid
        "interpolate_antialias": True,
        "interpolate_offset": 0.0,
    }


def _prefix_tokens(state: Mapping[str, Tensor]) -> int:
    return int("cls_token" in state) + (int(state["reg_token"].shape[1]) if "reg_token" in state else 0)


def _patch_positions(state: Mapping[str, Tensor], source: str) -> tuple[int, int]:
    """(positions of prefix tokens in ``pos_embed``, patch positions): timm's ``no_embed_class`` models have no
    prefix positions; the others have one per class/register token."""
    total, prefix = int(state["pos_embed"].shape[1]), _prefix_tokens(state)
    for lead in (0, prefix):
        side = math.isqrt(total - lead)
        if side * side == total - lead:
            return lead, total - lead
    raise TimmError(f"{source}: pos_embed holds {total} positions: not a square grid with or without the "
                    f"{prefix} class/register tokens")


def _grid_side(state: Mapping[str, Tensor], source: str) -> int:
    return math.isqrt(_patch_positions(state, source)[1])


def timm_vit_to_official(state: Mapping[str, Tensor], source: str = "timm checkpoint") -> dict[str, Tensor]:
    """A timm CLIP/SigLIP/DeiT-III/plain ``VisionTransformer`` state dict in our ViT's keys (``fc_norm``, the
    average pool's norm, keeps its name)."""
    drop = ("head.",)  # the classifier / CLIP projection: not the backbone
    out = {k: v for k, v in state.items() if not k.startswith(drop) and not k.startswith("attn_pool.")}
    lead, _ = _patch_positions(state, source)
    pos = out.pop("pos_embed")
    prefix_pos, patch_pos = pos[:, :lead], pos[:, lead:]
    n_cls = int("cls_token" in out)
    if lead:  # constant positions of the class/register tokens: folded into the tokens
        if n_cls:
            out["cls_token"] = out["cls_token"] + prefix_pos[:, :1]
        if "reg_token" in out:
            out["reg_token"] = out["reg_token"] + prefix_pos[:, n_cls:]
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
    dim = pos.shape[-1]
    out["pos_embed"] = torch.cat([torch.zeros(1, n_cls, dim, dtype=pos.dtype), patch_pos], dim=1)
    out["mask_token"] = torch.zeros(1, dim, dtype=pos.dtype)  # unused at inference
    if "attn_pool.latent" in state:
        latent = state["attn_pool.latent"]
        if latent.shape[1] != 1:
            raise TimmError(f"{source}: an attention pool with {latent.shape[1]} latents is not supported (1 is)")
        out["attn_pool.probe"] = latent
        for p in ("weight", "bias"):  # kv rows are [k; v]: q, k, v stack as MultiheadAttention's in_proj
            out[f"attn_pool.attention.in_proj_{p}"] = torch.cat([state[f"attn_pool.q.{p}"], state[f"attn_pool.kv.{p}"]])
            out[f"attn_pool.attention.out_proj.{p}"] = state[f"attn_pool.proj.{p}"]
            out[f"attn_pool.layernorm.{p}"] = state[f"attn_pool.norm.{p}"]
            for fc in ("fc1", "fc2"):
                out[f"attn_pool.mlp.{fc}.{p}"] = state[f"attn_pool.mlp.{fc}.{p}"]
    return out


def _heads(args: Mapping[str, Any], dim: int, table: Mapping[int, int], source: str) -> int:
    heads = int(args.get("num_heads", table.get(dim, 0)))
    if not heads:
        raise TimmError(f"{source}: the head count of a {dim}-wide model is not in config.json's model_args "
                        f"(num_heads) and not a timm default width ({sorted(table)})")
    return heads


def config_from_timm_dinov3(timm_config: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """Our architecture dict for timm's DINOv3 (``Eva`` with ``rope_type='dinov3'``)."""
    args = dict(timm_config.get("model_args") or {})
    if "pos_embed" in state or "blocks.0.attn.q_norm.weight" in state:
        raise TimmError(f"{source}: a timm DINOv3 with position embeddings or qk_norm is not supported")
    patch = state["patch_embed.proj.weight"]
    dim, depth = int(patch.shape[0]), 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    swiglu = "blocks.0.mlp.fc1_g.weight" in state
    hidden = state["blocks.0.mlp.fc1_g.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    img = args.get("img_size", 224)
    return {
        "family": "dinov3",
        "img_size": int(img[0] if isinstance(img, (list, tuple)) else img),
        "patch_size": int(patch.shape[-1]),
        "in_chans": int(patch.shape[1]),
        "embed_dim": dim,
        "depth": depth,
        "num_heads": _heads(args, dim, DINOV3_HEADS_BY_WIDTH, source),
        "mlp_ratio": mlp_ratio(dim, int(hidden), source),
        "qkv_bias": "blocks.0.attn.q_bias" in state or "blocks.0.attn.qkv.bias" in state,
        "proj_bias": "blocks.0.attn.proj.bias" in state,
        "ffn_bias": f"blocks.0.mlp.{'fc1_g' if swiglu else 'fc1'}.bias" in state,
        "init_values": 1.0,  # LayerScale values come from the file
        "ffn_layer": "swiglu_exact" if swiglu else "mlp",
        "act_layer": "gelu",
        "norm_eps": 1e-5,  # timm's dinov3 defs: LayerNorm eps 1e-5
        "num_register_tokens": int(state["reg_token"].shape[1]) if "reg_token" in state else 0,
        "pos_embed": False,
        "rope": True,
        "rope_theta": float(args.get("rope_temperature", 100.0)),
    }


def timm_dinov3_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm's DINOv3 (``Eva``) state dict in our ViT's keys."""
    out: dict[str, Tensor] = {}
    dim = state["cls_token"].shape[-1]
    for key, value in state.items():
        if key.startswith(("head.", "fc_norm.")) or ".attn.q_bias" in key or ".attn.k_bias" in key:
            continue  # classifier; the q/k/v biases are fused below
        if ".attn.v_bias" in key:
            block = key[: -len("attn.v_bias")]
            zeros = torch.zeros(dim, dtype=value.dtype)
            out[f"{block}attn.qkv.bias"] = torch.cat([state.get(f"{block}attn.q_bias", zeros),
                                                      state.get(f"{block}attn.k_bias", zeros), value])  # fmt: skip
            continue
        key = key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma").replace("reg_token", "register_tokens")
        out[key] = value
    for key in [k for k in out if k.endswith("mlp.fc1_g.weight") or k.endswith("mlp.fc1_g.bias")]:
        block, param = key[: -len("mlp.fc1_g.weight")] if key.endswith("weight") else key[: -len("mlp.fc1_g.bias")], key.rsplit(".", 1)[1]
        out[f"{block}mlp.w12.{param}"] = torch.cat([out.pop(key), out.pop(f"{block}mlp.fc1_x.{param}")])
        out[f"{block}mlp.w3.{param}"] = out.pop(f"{block}mlp.fc2.{param}")
    out["mask_token"] = torch.zeros(1, dim, dtype=state["cls_token"].dtype)  # unused at inference
    return out


def _unfold(value: Tensor, source_token: Tensor, position: Tensor) -> Tensor:
    """A prefix token with its constant position taken out again (the source's own tensor when unchanged, so that
    an unedited token is written back bit for bit)."""
    return source_token if torch.equal(source_token + position, value) else value - position


def official_to_timm_vit(state: Mapping[str, Tensor], source: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ViT's keys back to timm's CLIP/SigLIP/DeiT-III ``VisionTransformer`` keys (the inverse of
    :func:`timm_vit_to_official`); ``source`` is the state dict read, which holds the prefix tokens' positions."""
    lead, _ = _patch_positions(source, "the source timm checkpoint")
    pos = source["pos_embed"]
    prefix_pos = pos[:, :lead]
    n_cls = int("cls_token" in state)
    skip = ("mask_token", "pos_embed", "cls_token", "register_tokens")
    out = {k: v for k, v in state.items() if k not in skip and not k.startswith("attn_pool.")}
    out["pos_embed"] = torch.cat([prefix_pos, state["pos_embed"][:, n_cls:]], dim=1)
    if n_cls:
        cls = state["cls_token"]
        out["cls_token"] = _unfold(cls, source["cls_token"], prefix_pos[:, :1]) if lead else cls
    if "register_tokens" in state:
        reg = state["register_tokens"]
        out["reg_token"] = _unfold(reg, source["reg_token"], prefix_pos[:, n_cls:]) if lead else reg
    if "attn_pool.probe" in state:
        dim = state["attn_pool.probe"].shape[-1]
        out["attn_pool.latent"] = state["attn_pool.probe"]
        for p in ("weight", "bias"):
            in_proj = state[f"attn_pool.attention.in_proj_{p}"]
            out[f"attn_pool.q.{p}"], out[f"attn_pool.kv.{p}"] = in_proj[:dim].clone(), in_proj[dim:].clone()
            out[f"attn_pool.proj.{p}"] = state[f"attn_pool.attention.out_proj.{p}"]
            out[f"attn_pool.norm.{p}"] = state[f"attn_pool.layernorm.{p}"]
            for fc in ("fc1", "fc2"):
                out[f"attn_pool.mlp.{fc}.{p}"] = state[f"attn_pool.mlp.{fc}.{p}"]
    return out


def official_to_timm_dinov3(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ViT's keys back to timm's DINOv3 (``Eva``) keys (the inverse of :func:`timm_dinov3_to_official`): the
    fused q/k/v bias as ``q_bias``/``k_bias``/``v_bias`` (``k_bias`` is a non-persistent zero buffer in timm: the
    writer drops it when zero), LayerScale as ``gamma_1``/``gamma_2``, SwiGLU's ``w12``/``w3`` as
    ``fc1_g``/``fc1_x``/``fc2``; the mask token, which timm's DINOv3 has not, comes out for the writer to drop."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".attn.qkv.bias"):
            block = key[: -len("qkv.bias")]
            for x, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{block}{x}_bias"] = part.clone()
            continue
        if key.endswith((".mlp.w12.weight", ".mlp.w12.bias")):
            block, param = key.rsplit(".mlp.w12.", 1)
            gate, x = value.chunk(2, dim=0)
            out[f"{block}.mlp.fc1_g.{param}"], out[f"{block}.mlp.fc1_x.{param}"] = gate.clone(), x.clone()
            continue
        key = key.replace(".mlp.w3.", ".mlp.fc2.").replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        out[key.replace("register_tokens", "reg_token")] = value
    return out
