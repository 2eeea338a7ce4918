"""A checkpoint of another family written back in the layout it was read in (``--save-format source``).

Each family module holds its reading converter and its inverse; this module pairs each source (a transformers
``model_type``, a timm family, OpenCLIP) with its inverse and with how the source file names its keys, and lays
the written tensors over the source's own state dict: every key the reader ignored (CLIP's ``visual_projection``,
a timm classifier ``head``, OpenCLIP's text tower and ``visual.proj``) is carried over unchanged, so the output is
a complete checkpoint of the source with the backbone's tensors replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from torch import Tensor

from sinder.models.families import clip, dinov3, open_clip, siglip, siglip2, timm_vit
from sinder.models.families.transformers_encoder import strip_prefix

# how the source names our inverse's keys: the reader's own prefix stripping, applied to the names
Names = Callable[[Iterable[str]], dict[str, str]]
# our keys -> the family's (given the source's state dict, for what only the source holds)
Inverse = Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], dict[str, Tensor]]


def _transformers_names(keys: Iterable[str]) -> dict[str, str]:
    return strip_prefix({k: k for k in keys})


def _same_names(keys: Iterable[str]) -> dict[str, str]:
    return {k: k for k in keys}


def _open_clip_names(keys: Iterable[str]) -> dict[str, str]:
    return open_clip.visual_state({k: k for k in keys})


# (source kind, model_type or family) -> (names, inverse)
WRITERS: dict[tuple[str, str], tuple[Names, Inverse]] = {
    **{("hf", m): (_transformers_names, lambda s, _src: clip.official_to_clip(s)) for m in clip.MODEL_TYPES},
    **{("hf", m): (_transformers_names, lambda s, _src: siglip.official_to_siglip(s)) for m in siglip.MODEL_TYPES},
    **{("hf", m): (_transformers_names, lambda s, _src: siglip2.official_to_siglip2(s))
       for m in siglip2.MODEL_TYPES},  # fmt: skip
    **{("hf", m): (dinov3.source_names, lambda s, _src: dinov3.official_to_dinov3(s)) for m in dinov3.MODEL_TYPES},
    **{("timm", f): (_same_names, timm_vit.official_to_timm_vit) for f in ("clip", "siglip", "deit3", "vit")},
    ("timm", "dinov3"): (_same_names, lambda s, _src: timm_vit.official_to_timm_dinov3(s)),
    ("open_clip", "clip"): (_open_clip_names, lambda s, _src: open_clip.official_to_open_clip(s)),
}


def writer_key(kind: str, family: str, hf_config: Mapping | None) -> tuple[str, str]:
    """The key into :data:`WRITERS` of a source: a transformers folder by ``model_type``, the others by family."""
    return (kind, str((hf_config or {}).get("model_type")) if kind == "hf" else family)


def source_state(state: Mapping[str, Tensor], raw: Mapping[str, Tensor] | None, key: tuple[str, str],
                 prefix: str = "") -> dict[str, Tensor]:  # fmt: skip
    """The source's state dict ``raw`` with the backbone's tensors replaced by ours (``state``, official keys).

    A tensor our inverse writes under a name the source has not is dropped when it is zero (a bias the source has
    not reads as zero: DINOv3's key bias, our mask token) and refused otherwise: its value would be lost. Without
    a source (``raw`` None: a model written as a transformers folder from scratch) the inverse's keys under
    ``prefix`` are the output.
    """
    names, inverse = WRITERS[key]
    if raw is None:
        return {prefix + k: v.contiguous() for k, v in inverse(state, {}).items()}
    where = names(raw)  # our inverse's key -> the source's key
    out = dict(raw)
    for name, value in inverse(state, {k: raw[v] for k, v in where.items()}).items():
        target = where.get(name)
        if target is None:
            if value.count_nonzero():
                raise ValueError(f"cannot write {name} back: the source checkpoint has no such tensor")
            continue
        if tuple(value.shape) != tuple(raw[target].shape):
            raise ValueError(f"cannot write {name} back as {target}: shape {tuple(value.shape)} is not the "
                             f"source's {tuple(raw[target].shape)}")
        out[target] = value.to(raw[target].dtype).contiguous()
    return out
