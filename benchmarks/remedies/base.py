"""Remedies by name: what turns a base backbone into an evaluated one (``--backbone NAME[:WEIGHTS]+REMEDY[:ARGS]``).

A remedy is a :class:`Remedy` registered with :func:`register_remedy`, one module per remedy in this package
(found without a central list, like the tasks). It parses its arguments when the spec is parsed (a bad argument
is an error before any work), says what is missing without building the model (``problem``, for the preflight),
and loads the evaluated model. The loaded model carries, like any backbone:

- ``weights_sha256``: a content hash of its tensors; for an inference-time remedy that keeps the base's tensors,
  the base's hash combined with the remedy's parameters, so a cache keyed by it never serves the base's features;
- ``weights_role``: what it is (``kind`` ``repair`` or ``remedy``, ``remedy``, ``config``, ``config_sha256`` and
  ``base_sha256``), recorded in the run identity so each remedy and parameter set is its own work;
- ``remedy_cost``: ``setup_s`` (seconds to make it from the base: a repair's training, a fit, a transform; None
  when not known) and ``extra_tokens`` (tokens added at inference).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from benchmarks.core.registry import registrar
from sinder.models.roles import Role

_REMEDIES: dict[str, Remedy] = {}
_NOT_REMEDY_MODULES = {"base", "task", "census"}
_discovered = False


class Remedy:
    """Base class: set ``name``, ``title``, ``args_help``; implement ``parse_args``, ``problem`` and ``load``."""

    name: str = ""
    title: str = ""
    args_help: str = ""  # the ARGS part of the spec, e.g. "gamma=G"

    def parse_args(self, text: str | None) -> dict[str, Any]:
        """The remedy's parameters from the text after ``+NAME:`` (None without one); ValueError with the fix."""
        if text:
            raise ValueError(f"remedy {self.name} takes no arguments, got {text!r}")
        return {}

    def problem(self, base, params: dict[str, Any]) -> str | None:
        """Why the remedy cannot be applied to ``base`` (a BackboneSpec without remedy), without building it."""
        return None

    def load(self, base, params: dict[str, Any], device="cpu"):
        raise NotImplementedError


register_remedy = registrar(lambda: _REMEDIES, "remedy")


def discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import benchmarks.remedies as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg and info.name not in _NOT_REMEDY_MODULES:
            importlib.import_module(f"{package.__name__}.{info.name}")


def list_remedies() -> list[str]:
    discover()
    return sorted(_REMEDIES)


def get_remedy(name: str) -> Remedy:
    discover()
    if name not in _REMEDIES:
        raise KeyError(f"unknown remedy {name!r}; remedies: {', '.join(sorted(_REMEDIES))}")
    return _REMEDIES[name]




def remedy_role(kind: str, remedy: str, config: dict[str, Any], base_sha256: str) -> dict[str, Any]:
    """The role of a remedied backbone (the form ``sinder.models.weights.weights_role`` gives a repaired file)."""
    return Role.remedied(kind, remedy, config, base_sha256).as_dict()


def key_value_args(remedy: str, text: str | None, allowed: dict[str, type], positional: str | None = None):
    """``k=v,k=v`` (or one bare value for ``positional``) -> dict, values converted; ValueError naming the fix."""
    out: dict[str, Any] = {}
    for part in [p for p in (text or "").split(",") if p.strip()]:
        key, eq, value = part.partition("=")
        if not eq:
            if positional is None or positional in out:
                raise ValueError(f"remedy {remedy}: argument {part!r} needs a name (KEY=VALUE)")
            key, value = positional, part
        key = key.strip()
        if key not in allowed:
            raise ValueError(f"remedy {remedy}: unknown argument {key!r}; it takes {', '.join(allowed)}")
        try:
            out[key] = allowed[key](value.strip())
        except ValueError:
            raise ValueError(f"remedy {remedy}: {key}={value.strip()!r} is not a {allowed[key].__name__}") from None
    return out


REPAIR_SECONDS_KEY = "repair_seconds"  # safetensors metadata of a repaired file: the repair's wall time


def default_cost(model) -> dict[str, Any]:
    """The cost of what a loaded backbone is: a repair's seconds (when its file records them), a register
    release's extra tokens; nothing for a base."""
    role = getattr(model, "weights_role", None) or {}
    cost: dict[str, Any] = {"setup_s": 0.0, "extra_tokens": 0}
    if role.get("kind") == "repair":
        from pathlib import Path

        from sinder.models.weights import file_metadata

        source = Path(str(getattr(model, "weights_source", "")))
        meta = file_metadata(source) if source.is_file() else {}
        cost["setup_s"] = float(meta[REPAIR_SECONDS_KEY]) if REPAIR_SECONDS_KEY in meta else None
    elif role.get("kind") == "register":
        cost.update(setup_s=None, extra_tokens=int(getattr(model, "num_register_tokens", 0)))  # a full pretraining
    return cost
