"""``+registers[:WEIGHTS]``: the base's register release (Darcet et al. 2024, the ``_reg`` preset)."""

from __future__ import annotations

from typing import Any

from benchmarks.core.remedy import Remedy, default_cost, register_remedy
from sinder.models.roles import REGISTER_SUFFIX, Role, is_register_release


def register_preset(name: str) -> str:
    return name if is_register_release(name) else f"{name}{REGISTER_SUFFIX}"


@register_remedy
class Registers(Remedy):
    name = "registers"
    title = "retraining with registers (the official _reg releases)"
    args_help = "[WEIGHTS of the register release; default: the torch hub cache]"
    replaces_weights = True  # the register release, not the base's weights

    def parse_args(self, text: str | None) -> dict[str, Any]:
        return {"weights": text.strip()} if (text or "").strip() else {}

    def _spec(self, base, params):
        from benchmarks.core.backbones import BackboneSpec

        preset = register_preset(base.name)
        return BackboneSpec(text=base.text, name=preset, weights=params.get("weights"), label=base.label)

    def problem(self, base, params: dict[str, Any]) -> str | None:
        from benchmarks.core.backbones import backbone_problem
        from sinder.models.vit import PRESETS

        preset = register_preset(base.name)
        if preset not in PRESETS:
            registers = sorted(p for p in PRESETS if is_register_release(p))
            return f"{base.name} has no register release ({preset} is not a preset; those with one: {', '.join(registers)})"
        return backbone_problem(self._spec(base, params))

    def load(self, base, params: dict[str, Any], device="cpu"):
        from benchmarks.core.backbones import load

        model = load(self._spec(base, params), device=device)
        # Named by the spec as the register release, whatever the file is called.
        model.weights_role = Role.release(register_preset(base.name)).as_dict()
        model.remedy_cost = default_cost(model)
        return model
