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

from sinder.models.adapter import FAMILY_MEAN_STD, ViTDescription, num_prefix_tokens, pooling_of
from sinder.models.defective import STAND_INS
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
# The constructed stand-ins (dinov2_tiny_defective and its CLIP-like and SigLIP-like twins) were built on
# ImageNet-normalised images (defective.sample_images, the synthetic photographs), whatever family's anatomy they
# imitate: that is their pretrained config; real CLIP and SigLIP checkpoints get their family's statistics.
STAND_IN_PRETRAINED: dict[str, PretrainedConfig] = {
    name: PretrainedConfig(file=None, url=None, input_size=(arch["in_chans"], arch["img_size"], arch["img_size"]),
                           patch_size=arch["patch_size"])
    for name, (arch, _) in STAND_INS.items()
}


def pretrained_config(name: str) -> PretrainedConfig | None:
    """The pretrained config of a preset, None for any other name."""
    return PRETRAINED.get(name)


def family_pretrained_cfg(config, patch_size: int, mean=None, std=None,
                          input_size: tuple[int, int, int] | None = None) -> PretrainedConfig:  # fmt: skip
    """A checkpoint's pretrained config from its architecture dict: its family's mean/std (FAMILY_MEAN_STD) and
    its position embeddings' input size, unless given."""
    family_mean, family_std = FAMILY_MEAN_STD.get(config.get("family", "dinov2"), FAMILY_MEAN_STD["dinov2"])
    size = int(config.get("img_size", 0))
    return PretrainedConfig(
        file=None, url=None, input_size=input_size or (int(config.get("in_chans", 3)), size, size),
        patch_size=int(patch_size), mean=tuple(mean or family_mean), std=tuple(std or family_std),
    )


PREPROCESSOR_CONFIG = "preprocessor_config.json"  # what a transformers image processor's save_pretrained writes
TIMM_CONFIG = "config.json"  # timm's save_pretrained: its ``pretrained_cfg`` holds mean, std, input_size
OPEN_CLIP_CONFIG = "open_clip_config.json"  # OpenCLIP's hub folders: ``preprocess_cfg`` holds mean, std


def read_preprocessor_config(folder, config) -> PretrainedConfig | None:
    """The pretrained config a checkpoint folder says it was trained with, for the architecture dict ``config``:
    a transformers ``preprocessor_config.json`` (``image_mean``, ``image_std``, ``crop_size`` when it
    center-crops, else ``size``), a timm ``config.json``'s ``pretrained_cfg`` (``mean``, ``std``,
    ``input_size``) or an ``open_clip_config.json``'s ``preprocess_cfg`` (``mean``, ``std``); None when none
    says. Keys left out take the family's defaults; a bad value is a ValueError naming the file."""
    from pathlib import Path

    folder = Path(folder)
    data = _json_object(folder / PREPROCESSOR_CONFIG)
    if data is not None:
        path = folder / PREPROCESSOR_CONFIG
        mean, std = _stats(data.get("image_mean"), path, "image_mean"), _stats(data.get("image_std"), path, "image_std")
        if data.get("do_normalize") is False:  # the processor feeds [0, 1] pixels as they are
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        crops = data.get("do_center_crop", "crop_size" in data)  # CLIP: resize, then the crop the model sees
        size = (_processor_size(data.get("crop_size")) if crops else None) or _processor_size(data.get("size"))
    else:
        path = folder / TIMM_CONFIG
        timm = (_json_object(path) or {}).get("pretrained_cfg")
        if not isinstance(timm, dict):
            path = folder / OPEN_CLIP_CONFIG
            timm = (_json_object(path) or {}).get("preprocess_cfg")
        if not isinstance(timm, dict):
            return None
        mean, std = _stats(timm.get("mean"), path, "mean"), _stats(timm.get("std"), path, "std")
        given = timm.get("input_size")
        size = tuple(int(v) for v in given[1:]) if isinstance(given, list) and len(given) == 3 else None
    channels = int(config.get("in_chans", 3))
    return family_pretrained_cfg(config, int(config["patch_size"]), mean, std,
                                 (channels, *size) if size else None)  # fmt: skip


def _json_object(path) -> dict | None:
    """The JSON object in ``path``; None when there is no such file; a ValueError naming it when it is not one."""
    import json

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _stats(value, path, key: str) -> tuple[float, float, float] | None:
    """A mean or std of a preprocessing file as 3 floats (one number: all channels); None when absent."""
    import math

    if value is None:
        return None
    value = [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)  # fmt: skip
    if not ok or (key.endswith("std") and min(value) <= 0):
        positive = " > 0" if key.endswith("std") else ""
        raise ValueError(f"{path}: {key} {value!r} is not 3 finite numbers{positive}")
    return tuple(float(v) for v in value)


def _processor_size(value) -> tuple[int, int] | None:
    """(height, width) of a processor's ``size``/``crop_size``: an int, {height, width} or {shortest_edge}."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    return None


def missing_members(obj, protocol: type = Backbone) -> list[str]:
    """The members of ``protocol`` that ``obj`` lacks (empty: it can be benchmarked), for one-line errors."""
    names = [n for klass in protocol.__mro__ if klass not in (object, Protocol, typing.Generic)
             for n in (*getattr(klass, "__annotations__", {}), *(k for k, v in vars(klass).items() if callable(v)))]
    wanted = dict.fromkeys(n for n in names if not n.startswith("_"))
    return [n for n in wanted if not hasattr(obj, n)]


def normalization(model) -> dict[str, tuple[float, float, float]]:
    """``{"mean": ..., "std": ...}`` the backbone was trained with (its pretrained config, else its family's):
    what the repair, the census, analyze and test-time registers normalise their images with."""
    cfg = describe(model).pretrained_cfg
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}


def describe(model) -> ViTDescription:
    """The model description (``sinder.models.adapter.ViTDescription``) of a built backbone: its family and
    token layout from its architecture dict, its pretrained config from ``PRETRAINED`` (by name) or its own."""
    config = getattr(model, "config", None) or {}
    family = config.get("family", "dinov2")
    name = getattr(model, "name", "")
    pretrained = getattr(model, "pretrained_cfg", None) or PRETRAINED.get(name) or STAND_IN_PRETRAINED.get(name)
    if pretrained is None:  # a checkpoint that does not say its preprocessing: its family's
        pretrained = family_pretrained_cfg(config, int(model.patch_size))
    return ViTDescription(
        family=family,
        num_prefix_tokens=num_prefix_tokens(model),
        num_register_tokens=int(getattr(model, "num_register_tokens", 0) or 0),
        patch_size=int(model.patch_size),
        pooling=pooling_of(config),
        pretrained_cfg=pretrained,
    )
