"""``+sinder:REPAIRED.safetensors``: a SINDER-repaired checkpoint of the base (its metadata must say so)."""

from __future__ import annotations

from typing import Any

from benchmarks.core.remedy import Remedy, default_cost, register_remedy


@register_remedy
class SinderRepair(Remedy):
    name = "sinder"
    title = "SINDER repair (a repaired checkpoint)"
    args_help = "REPAIRED.safetensors (from `sinder repair`)"
    replaces_weights = True  # the repaired file, not the base's weights

    def parse_args(self, text: str | None) -> dict[str, Any]:
        if not (text or "").strip():
            raise ValueError("remedy sinder needs the repaired checkpoint: +sinder:REPAIRED.safetensors")
        return {"weights": text.strip()}

    def problem(self, base, params: dict[str, Any]) -> str | None:
        from pathlib import Path

        from benchmarks.core.backbones import backbone_problem
        from sinder.models.weights import WeightsError, weights_role

        path = params["weights"]
        if not Path(path).is_file():
            return f"repaired checkpoint {path} does not exist"
        try:
            role = weights_role(path, None)
        except WeightsError as err:
            return str(err)
        if role.get("kind") != "repair" or role.get("remedy") != "sinder":
            return (f"{path} is not a SINDER repair (its metadata has no sinder_config): write it with "
                    "`sinder repair`, or pass it as NAME:WEIGHTS")  # fmt: skip
        return backbone_problem(type(base)(text=base.text, name=base.name, weights=path, label=base.label))

    def load(self, base, params: dict[str, Any], device="cpu"):
        from sinder.models.weights import load_backbone

        model = load_backbone(base.name, weights=params["weights"], device=device)
        role = model.weights_role
        if role.get("kind") != "repair" or role.get("remedy") != "sinder":
            raise ValueError(f"{params['weights']} is not a SINDER repair (no sinder_config in its metadata)")
        model.remedy_cost = default_cost(model)
        return model
