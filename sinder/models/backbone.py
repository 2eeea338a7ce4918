"""The backbone interface in one place, and what each preset's release is (its pretrained config).

:class:`Backbone` is what the benchmark tasks read off a model; :class:`RepairableBackbone` adds what the SINDER
repair and the defect analysis need. ``sinder.models.weights.load_backbone`` returns a ``DinoVisionTransformer``, which
satisfies both; any other module with these members can be benchmarked.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from sinder.models.adapter import ViTDescription, num_prefix_tokens
from sinder.models.vit import PRESETS
from sinder.utils.images import IMAGENET_MEAN, IMAGENET_STD


@runtime_checkable
class Backbone(Protocol):
    """What the benchmark tasks (and the runner's records) use of a backbone.

    ``get_intermediate_layers`` follows DINOv2: the selected blocks' outputs (``n`` last blocks or a list of
    block indices) without class and register tokens, optionally after the final norm, reshaped to
    ``(B, C, H/patch, W/patch)`` and paired with the class token. ``blocks`` is only counted by tasks.
    """

    name: str  # the label results are shown under when no other is given
    weights_sha256: str  # identity of the weights: records, caches and resume key on it
    weights_source: str  # where the weights came from, for records
    embed_dim: int  # channels of every token
    patch_size: int  # inputs must be multiples of it; token grid = input size / patch size
    num_register_tokens: int  # tokens between the class token and the patch tokens
    blocks: Sequence[nn.Module]  # len() is the depth

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Iterable[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple: ...


@runtime_checkable
class RepairableBackbone(Backbone, Protocol):
    """What the repair and the defect analysis use in addition: the token pipeline, block by block.

    ``blocks`` must be our ViT's blocks (``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1``, ``norm2``, ``mlp``,
    ``ls2``; ``ls1``/``ls2`` are identities in a family without LayerScale, the MLP's activation is the
    architecture's ``act_layer``): the repair linearises and edits their weights.
    """

    norm: nn.Module

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor: ...


# ------------------------------------------------------------------------------------------- presets
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dinov2/{arch}/{file}"


@dataclass(frozen=True)
class PretrainedConfig:
    """What timm calls a pretrained config: where a preset's weights come from and how to feed it."""

    file: str | None  # official release file name (the torch hub cache holds it under this name)
    url: str | None  # where the official file is downloaded from
    input_size: tuple[int, int, int]  # (channels, height, width) the position embeddings were trained at
    patch_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    hf_hub_id: str | None = None  # the same weights on the Hugging Face Hub (load the folder it downloads)
    timm_name: str | None = None  # the same weights in timm (load the model.safetensors it downloads)


_RELEASES = {"s": "small", "b": "base", "l": "large", "g": "giant"}


def _pretrained_configs() -> dict[str, PretrainedConfig]:
    out = {}
    for name, arch in PRESETS.items():
        size = (arch["in_chans"], arch["img_size"], arch["img_size"])
        out[name] = PretrainedConfig(file=None, url=None, input_size=size, patch_size=arch["patch_size"])
    for letter, word in _RELEASES.items():
        for reg in (False, True):
            name = f"dinov2_vit{letter}14{'_reg' if reg else ''}"
            file = f"dinov2_vit{letter}14{'_reg4' if reg else ''}_pretrain.pth"
            arch = PRESETS[name]
            out[name] = PretrainedConfig(
                file=file,
                url=OFFICIAL_URL.format(arch=f"dinov2_vit{letter}14", file=file),
                input_size=(arch["in_chans"], arch["img_size"], arch["img_size"]),
                patch_size=arch["patch_size"],
                hf_hub_id=f"facebook/dinov2-{'with-registers-' if reg else ''}{word}",
                timm_name=f"vit_{word}_patch14_{'reg4_' if reg else ''}dinov2.lvd142m",
            )
    return out


PRETRAINED: dict[str, PretrainedConfig] = _pretrained_configs()


def pretrained_config(name: str) -> PretrainedConfig | None:
    """The pretrained config of a preset, None for any other name."""
    return PRETRAINED.get(name)


def missing_members(obj, protocol: type = Backbone) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (empty: it can be benchmarked), for one-line errors."""
    names = [n for klass in protocol.__mro__ if klass not in (object, Protocol, typing.Generic)
             for n in (*getattr(klass, "__annotations__", {}), *(k for k, v in vars(klass).items() if callable(v)))]
    wanted = dict.fromkeys(n for n in names if not n.startswith("_"))
    return [n for n in wanted if not hasattr(obj, n)]


def describe(model) -> ViTDescription:
    """The model description (``sinder.models.adapter.ViTDescription``) of a built backbone: its family and
    token layout from its architecture dict, its pretrained config from ``PRETRAINED`` (by name) or its own."""
    config = getattr(model, "config", None) or {}
    family = config.get("family", "dinov2")
    pretrained = getattr(model, "pretrained_cfg", None) or PRETRAINED.get(getattr(model, "name", ""))
    if pretrained is None:
        size = int(config.get("img_size", 0))
        pretrained = PretrainedConfig(
            file=None, url=None, input_size=(int(config.get("in_chans", 3)), size, size),
            patch_size=int(model.patch_size),
        )
    return ViTDescription(
        family=family,
        num_prefix_tokens=num_prefix_tokens(model),
        num_register_tokens=int(getattr(model, "num_register_tokens", 0) or 0),
        patch_size=int(model.patch_size),
        pooling="attention" if config.get("attn_pool") else "cls",
        pretrained_cfg=pretrained,
    )
