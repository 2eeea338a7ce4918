"""Backbones whose weights are constructed, not downloaded (tests and smoke runs): the one registry of them.

Each name maps to a function returning (architecture config, state dict). ``sinder.models.weights`` loads them by
name; the modules that build them (``sinder.models.vit``, ``sinder.models.defective``,
``sinder.models.standin``) know nothing of the loader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from sinder.models import defective as defective_model
from sinder.models import standin
from sinder.models.vit import build_vit

Builder = Callable[[], tuple[dict[str, Any], dict[str, Tensor]]]


def _random_tiny(arch: str) -> Builder:
    def build():
        model = build_vit(arch, seed=0)
        return dict(model.config), model.state_dict()

    return build


def _defective_tiny(name: str) -> Builder:
    def build():
        return dict(defective_model.STAND_INS[name][0]), defective_model.defective_tiny_state_dict(0, name=name)

    return build


SYNTHETIC_BACKBONES: dict[str, Builder] = {
    **{f"{arch}_random": _random_tiny(arch) for arch in ("dinov2_tiny", "dinov2_tiny_swiglu", "dinov2_tiny_reg")},
    # dinov2_tiny_defective and its CLIP-like and SigLIP-like twins (the same planted circuit)
    **{name: _defective_tiny(name) for name in defective_model.STAND_INS},
    standin.PRESET_NAME: lambda: (dict(standin.CONFIG), standin.standin_state_dict()),
    standin.REG_PRESET_NAME: lambda: (dict(standin.REG_CONFIG), standin.standin_reg_state_dict()),
}
