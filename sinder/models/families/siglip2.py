"""transformers' ``Siglip2VisionModel`` (``model_type`` ``siglip2_vision_model``, SigLIP 2's NaFlex towers) as our
ViT at any resolution that is a multiple of the patch size.

SigLIP 2 differs from SigLIP (``sinder.models.families.siglip``) in its embeddings only (transformers 5.25
``modeling_siglip2``): the image comes as flattened patches (``(rows * cols, patch * patch * channels)``,
channels last, ``image_processing_siglip2.convert_image_to_patches``) through a ``Linear`` layer, and the
``num_patches`` position embeddings (a square grid) are resized for each image to its patch grid, bilinearly with
antialiasing (``resize_positional_embeddings``). An image of rows x cols patches with no padding is therefore our
ViT with the ``Linear`` weight reshaped to a convolution (``(D, p, p, C)`` -> ``(D, C, p, p)``) and
``interpolate_mode`` ``bilinear`` with antialiasing. Padded batches (the attention mask) are not represented: each
image is run at its own size. The fixed-resolution SigLIP 2 checkpoints (``Siglip*Model`` classes, e.g.
``google/siglip2-base-patch16-224``) load as SigLIP already.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from sinder.models.families.siglip import config_from_siglip, official_to_siglip, siglip_to_official
from sinder.models.families.transformers_encoder import strip_prefix

MODEL_TYPES = ("siglip2_vision_model",)


def config_from_siglip2(hf: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our architecture dict for a ``Siglip2VisionConfig``: SigLIP's, on a square grid of ``num_patches``."""
    patches, patch = int(hf.get("num_patches", 256)), int(hf.get("patch_size", 16))
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"{source}: num_patches {patches} is not a square grid of position embeddings")
    config = config_from_siglip({**hf, "image_size": side * patch, "patch_size": patch}, source)
    # resize_positional_embeddings: bilinear, align_corners=False, antialias=True, to the exact grid
    return {**config, "interpolate_mode": "bilinear", "interpolate_antialias": True, "interpolate_offset": 0.0}


def siglip2_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers SigLIP 2 vision state dict in our ViT's keys (the patch ``Linear`` as a convolution)."""
    state = strip_prefix(state)
    weight = state["embeddings.patch_embedding.weight"]
    dim, flat = weight.shape
    pos = state["embeddings.position_embedding.weight"]
    channels = 3 if flat % 3 == 0 and math.isqrt(flat // 3) ** 2 == flat // 3 else 1
    patch = math.isqrt(flat // channels)
    conv = weight.reshape(dim, patch, patch, channels).permute(0, 3, 1, 2).contiguous()
    return siglip_to_official({**state, "embeddings.patch_embedding.weight": conv,
                               "embeddings.position_embedding.weight": pos})  # fmt: skip


def official_to_siglip2(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ViT's keys back to a ``Siglip2VisionModel``'s: SigLIP's, with the patch convolution as the ``Linear``
    over channels-last flattened patches (the inverse of :func:`siglip2_to_official`)."""
    out = official_to_siglip(state)
    conv = out["embeddings.patch_embedding.weight"]
    out["embeddings.patch_embedding.weight"] = conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1).contiguous()
    return out
