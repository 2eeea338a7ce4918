"""The one model description (timm's way): what a ViT family looks like to the method and the benchmarks.

This module is the only place that knows the token layout: how many prefix tokens (class token, registers)
precede the patch tokens. Everything else asks :func:`num_prefix_tokens` or ``sinder.models.backbone.describe``. Families so far:
``dinov2`` (class token + registers, LayerScale, exact GELU or SwiGLU) and ``clip`` (transformers'
``CLIPVisionModel``: class token, no registers, pre-LayerNorm after the embeddings, QuickGELU, no LayerScale) and
``siglip`` (transformers' ``SiglipVisionModel``, SigLIP 2 and timm's ``*_siglip_*``: no class token, tanh-GELU, an
attention-pooling head), ``dinov3`` (transformers' ``DINOv3ViTModel``: class token + registers, LayerScale, RoPE on
q/k instead of position embeddings, GELU MLP or SwiGLU) and ``deit3`` (timm's ``deit3_*``: class token, LayerScale,
exact GELU, position embeddings on the patches only) and ``vit`` (timm's plain ``vit_*`` ``VisionTransformer``, e.g. the
average-pooled ``vit_*_gap_*``). timm's and OpenCLIP's CLIP towers are ``clip``.

It imports nothing from the rest of ``sinder.models``, so the ViT itself can ask it; :func:`describe`, which also
needs the presets' pretrained configs, lives beside them in ``sinder.models.backbone``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sinder.utils.images import IMAGENET_MEAN, IMAGENET_STD

FAMILIES = ("dinov2", "clip", "siglip", "dinov3", "deit3", "vit")
# the pooled feature: the class token, an attention-pool head's output, or the mean of the patch tokens (timm's
# global_pool='avg': prefix tokens are not in the mean; with fc_norm the final norm follows the mean)
POOLINGS = ("cls", "attention", "avg")
# The mean/std a family's checkpoints were trained with, for a checkpoint that does not say its own (a
# transformers folder without preprocessor_config.json, a file): DINOv2 the ImageNet statistics; CLIP OpenAI's
# (transformers' OPENAI_CLIP_MEAN/STD, CLIPImageProcessor's defaults); SigLIP 0.5/0.5 (SiglipImageProcessor's).
# The only place besides sinder.utils.images that writes a mean/std (tests/test_constants_once.py).
# DINOv3 (its transformers processor) and DeiT-III (timm's deit3_* pretrained configs) use ImageNet's too.
FAMILY_MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dinov3": (IMAGENET_MEAN, IMAGENET_STD),
    "deit3": (IMAGENET_MEAN, IMAGENET_STD),
    # timm's VisionTransformer _cfg default (IMAGENET_INCEPTION_MEAN/STD); a timm folder's pretrained_cfg wins
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclass(frozen=True)
class ViTDescription:
    """A backbone as the method and the benchmarks see it."""

    family: str  # one of FAMILIES
    num_prefix_tokens: int  # tokens before the patch tokens: class token (if any) + registers
    num_register_tokens: int
    patch_size: int
    pooling: str  # the pooled feature, one of POOLINGS: 'cls', 'attention' (an attention-pool head), 'avg'
    pretrained_cfg: Any  # sinder.models.backbone.PretrainedConfig: mean, std, input size of the checkpoint


def prefix_count(config: Mapping[str, Any]) -> int:
    """Prefix tokens of an architecture dict (``class_token`` defaults to True, ``num_register_tokens`` to 0)."""
    return int(bool(config.get("class_token", True))) + int(config.get("num_register_tokens", 0) or 0)


def pooling_of(config: Mapping[str, Any]) -> str:
    """The pooling (one of :data:`POOLINGS`) of an architecture dict: ``attn_pool`` or ``avg_pool`` switched on,
    else the class token."""
    if config.get("attn_pool"):
        return "attention"
    return "avg" if config.get("avg_pool") else "cls"


def num_prefix_tokens(model: Any) -> int:
    """Prefix tokens of a model: from its architecture dict when it has one, else class token + registers."""
    config = getattr(model, "config", None)
    if isinstance(config, Mapping):
        return prefix_count(config)
    return prefix_count({"num_register_tokens": getattr(model, "num_register_tokens", 0)})


def mlp_activation(config: Mapping[str, Any] | None, swiglu: bool) -> str:
    """The activation a block's MLP applies, as the defect maths name it: ``"swiglu"`` for a SwiGLU MLP, else the
    architecture's ``act_layer`` (``"gelu"`` exact, ``"quick_gelu"``, ``"gelu_pytorch_tanh"``). Without an
    architecture dict (a bare state dict) the DINOv2 rule: exact GELU."""
    if swiglu:
        return "swiglu"
    return str((config or {}).get("act_layer") or "gelu")


# Our ViT's block anatomy, onto which every family's converter maps its checkpoint (sinder.models.families): the
# parameter and module names, relative to ``blocks.<i>.``, that the defect maths and the remedies read. LayerScale
# is absent in a family without one (1 then); the MLP is SwiGLU (w12 -> silu-gated -> w3) or fc1 -> act -> fc2.
BLOCK_PARTS = {"norm1": "norm1", "qkv": "attn.qkv", "proj": "attn.proj", "ls1": "ls1.gamma", "norm2": "norm2",
               "ls2": "ls2.gamma"}  # fmt: skip
MLP_LAYERS = {"swiglu": ("mlp.w12", "mlp.w3"), "mlp": ("mlp.fc1", "mlp.fc2")}  # (input layer, output layer)
# The linear layers of a block: what the repair parametrises by singular values, the clamp clamps, Figure 7 shows.
BLOCK_LINEARS = (BLOCK_PARTS["qkv"], BLOCK_PARTS["proj"], *(name for pair in MLP_LAYERS.values() for name in pair))


def patch_multiple(size: int, patch_size: int) -> int:
    """``size`` rounded up to a multiple of ``patch_size``: the one rule for a resolution or crop given for the
    paper's patch-14 DINOv2 on a backbone of another patch size (518 -> 528 and 56 -> 64 at patch 16, STEGO's
    320 -> 322 at patch 14); a multiple already is kept. The repair, the analysis and every benchmark use it."""
    return math.ceil(int(size) / int(patch_size)) * int(patch_size)
