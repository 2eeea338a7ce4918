"""A backbone's own preprocessing and pooled feature, as every task reads them (from the model description).

No task or data loader writes a mean/std or a patch multiple of its own: each asks :func:`preprocessing_of`
for the backbone's (``sinder.models.backbone.describe``: the checkpoint's ``preprocessor_config.json``, its
release's pretrained config, or its family's defaults), and KNN, the linear probe and the depth heads take the
family's pooled feature from :func:`pooled_layers` (the class token, the attention pool's output for SigLIP, or
the mean of the patch tokens for timm's average-pooled ViTs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# The one rule for sizes given in multiples of 14 on another patch size lives with the model description.
from sinder.models.adapter import patch_multiple as patch_multiple

# What each pooling is, in words: the records' ``pooled_feature``.
POOLED_FEATURE = {
    "cls": "class token",
    "attention": "attention-pool head output (the family's pooled feature; no class token)",
    "avg": "mean of the patch tokens (timm's global_pool='avg'; class/register tokens not in it; fc_norm after it "
           "where the checkpoint has one)",
}


@dataclass(frozen=True)
class Preprocessing:
    """How to feed a backbone: normalisation, the resolution it was trained at, its patch size, its pooling."""

    family: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, ...]  # (channels, height, width) of the checkpoint's own preprocessing
    patch_size: int
    pooling: str  # 'cls', 'attention' or 'avg' (sinder.models.adapter.POOLINGS)

    @property
    def pooled_feature(self) -> str:
        return POOLED_FEATURE.get(self.pooling, self.pooling)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel of ``x`` (..., 3, H, W), values in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def pixel_mean_std(self) -> dict[str, list[float]]:
        """mmseg's ``SegDataPreProcessor`` mean/std: on 0-255 pixels, rounded to 3 decimals as mmseg's own
        configs write them (123.675 rather than 0.485 * 255 = 123.67499...)."""
        return {"mean": [round(255 * m, 3) for m in self.mean], "std": [round(255 * s, 3) for s in self.std]}

    def norm_tag(self) -> str:
        """The normalisation in a transform's description (feature-cache keys): ``imagenet-norm`` for the
        ImageNet statistics (the text caches were keyed by before other families), else the values."""
        from sinder.models.adapter import FAMILY_MEAN_STD

        imagenet_mean, imagenet_std = FAMILY_MEAN_STD["dinov2"]  # the ImageNet statistics
        if (self.mean, self.std) == (tuple(imagenet_mean), tuple(imagenet_std)):
            return "imagenet-norm"
        return f"norm(mean={self.mean},std={self.std})"

    def as_record(self) -> dict[str, Any]:
        """The run record's ``backbone.family`` and ``backbone.preprocessing``."""
        return {"family": self.family, "preprocessing": {
            "mean": list(self.mean), "std": list(self.std), "resolution": list(self.input_size[1:]),
            "patch_size": self.patch_size, "pooled_feature": self.pooled_feature}}  # fmt: skip

    def identity_part(self) -> dict[str, Any]:
        """What the run identity adds for this preprocessing: nothing for the ImageNet statistics (every record
        made before other families had them, and keeps its identity), else the mean/std, so the same weights
        fed another way are other work."""
        if self.norm_tag() == "imagenet-norm":
            return {}
        return {"preprocessing": {"mean": list(self.mean), "std": list(self.std)}}


def preprocessing_of(model) -> Preprocessing:
    """The :class:`Preprocessing` of a built backbone (any module with the Backbone members)."""
    from sinder.models.backbone import describe

    d = describe(model)
    cfg = d.pretrained_cfg
    return Preprocessing(family=d.family, mean=tuple(float(m) for m in cfg.mean), std=tuple(float(s) for s in cfg.std),
                         input_size=tuple(int(v) for v in cfg.input_size), patch_size=int(d.patch_size),
                         pooling=d.pooling)  # fmt: skip


def pooled_layers(model, images: Tensor, n: int | Iterable[int] = 1, *, reshape: bool = False,
                  norm: bool = True) -> tuple[tuple[Tensor, Tensor], ...]:  # fmt: skip
    """``(patch tokens, pooled feature)`` of the selected blocks, as ``get_intermediate_layers(...,
    return_class_token=True)`` gives them for a class-token model. For an attention- or average-pooled one
    (SigLIP; timm's ``global_pool='avg'``) the pooled feature of a block is the model's pool (``model.pool``:
    the attention head, or ``mean_pool``: the mean of the patch tokens then ``fc_norm``) applied to that block's tokens after
    the final norm (the input it was trained on, as DINOv2's probes take the normed class token of earlier
    blocks; with ``fc_norm`` the final norm is an identity); the patch tokens follow ``norm``. SigLIP has no
    prefix tokens: its patch tokens are all its tokens, the pool's whole input; the mean leaves out class and
    register tokens (and test-time registers' extra token, which never leaves the blocks)."""
    pooling = preprocessing_of(model).pooling
    if pooling == "cls":
        return tuple(
            model.get_intermediate_layers(images, n=n, reshape=reshape, return_class_token=True, norm=norm)
        )
    outs = model.get_intermediate_layers(images, n=n, norm=False)
    result = []
    for tokens in outs:  # the patch tokens: the attention pool's whole input (SigLIP), the mean's only input
        normed = model.norm(tokens)
        patches = normed if norm else tokens
        if reshape:
            rows, cols = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
            patches = patches.reshape(patches.shape[0], rows, cols, -1).permute(0, 3, 1, 2).contiguous()
        result.append((patches, model.mean_pool(normed) if pooling == "avg" else model.attn_pool(normed)))
    return tuple(result)


def family_preprocessing(family: str, patch_size: int, input_size: int = 224) -> Preprocessing:
    """A family's default preprocessing (``sinder.models.adapter.FAMILY_MEAN_STD``), for a caller without a
    model at hand (tests, estimates): the class-token pooling, the given patch and input size."""
    from sinder.models.adapter import FAMILY_MEAN_STD

    mean, std = FAMILY_MEAN_STD[family]
    return Preprocessing(family=family, mean=tuple(mean), std=tuple(std), input_size=(3, input_size, input_size),
                         patch_size=int(patch_size), pooling="cls")  # fmt: skip
