"""Remedies by name: what turns a base backbone into an evaluated one (``--backbone NAME[:WEIGHTS]+REMEDY[:ARGS]``).

A remedy is a :class:`Remedy` registered with :func:`register_remedy`, one module per remedy in
``benchmarks/remedies/`` (found without a central list, like the tasks; installed packages may add modules
through the ``sinder_bench.remedies`` entry-point group). A remedy parses its arguments when the spec is parsed
(a bad argument is an error before any work), says what is missing without building the model (``problem``, for
the preflight), and loads the evaluated model; core code asks it what else it needs (``replaces_weights``,
``smoke_args``) and never names one. The loaded model carries, like any backbone:

- ``weights_sha256``: a content hash of its tensors; for an inference-time remedy that keeps the base's tensors,
  the base's hash combined with the remedy's parameters, so a cache keyed by it never serves the base's features;
- ``weights_role``: what it is (``kind`` ``repair`` or ``remedy``, ``remedy``, ``config``, ``config_sha256`` and
  ``base_sha256``), recorded in the run identity so each remedy and parameter set is its own work;
- ``remedy_cost``: ``setup_s`` (seconds to make it from the base: a repair's training, a fit, a transform; None
  when not known) and ``extra_tokens`` (tokens added at inference).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sinder.models.roles import Role

from .registry_helper import Registry, failed_imports_hint, import_discovered, modules_in

REMEDY_PACKAGE = "benchmarks.remedies"  # one module per remedy
ENTRY_POINT_GROUP = "sinder_bench.remedies"
_NOT_REMEDY_MODULES = {"base"}  # the re-export of this interface
_REMEDIES: dict[str, Remedy] = {}
_IMPORT_ERRORS: dict[str, str] = {}


logger = logging.getLogger(__name__)
  # the default line printer (`say`/`log`): the CLI shows INFO on stdout

class Remedy:
    """Base class: set ``name``, ``title``, ``args_help``; implement ``parse_args``, ``problem`` and ``load``."""

    name: str = ""
    title: str = ""
    args_help: str = ""  # the ARGS part of the spec, e.g. "gamma=G"
    # True when the remedied model is other weights than the base's (a repaired file, a register release):
    # the base's own weights need not exist, so the preflight checks only what ``problem`` checks.
    replaces_weights: bool = False

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

    def smoke_args(self, base, cache_dir: Path, seed: int = 0, log: Callable[[str], None] = logger.info) -> str:
        """The ARGS of this remedy's variant of ``base`` in the smoke profile (suite key ``smoke_remedies``),
        making what they need once, cached under ``cache_dir`` by the base's content hash."""
        raise ValueError(f"remedy {self.name} has no smoke variant; remedies with one: "
                         f"{', '.join(smoke_remedy_names()) or 'none'}")  # fmt: skip


def _discover_remedies() -> None:
    folder = Path(__file__).resolve().parents[1] / REMEDY_PACKAGE.rpartition(".")[2]
    remedies = modules_in(folder, REMEDY_PACKAGE, packages=False, skip=_NOT_REMEDY_MODULES)
    import_discovered(remedies, ENTRY_POINT_GROUP, _IMPORT_ERRORS)


REMEDIES = Registry("remedy", table=lambda: _REMEDIES, discover=_discover_remedies, plural="remedies",
                    hint=failed_imports_hint("remedy", _IMPORT_ERRORS))  # fmt: skip
register_remedy = REMEDIES.register


def discover(force: bool = False) -> None:
    REMEDIES.discover(force)


def list_remedies() -> list[str]:
    return REMEDIES.names()


def get_remedy(name: str) -> Remedy:
    return REMEDIES.get(name)


def smoke_remedy_names() -> list[str]:
    """Remedies that define a smoke variant (override :meth:`Remedy.smoke_args`)."""
    return [n for n in list_remedies() if type(get_remedy(n)).smoke_args is not Remedy.smoke_args]


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
        if key in out:  # gamma=5,gamma=3: never the last one silently
            raise ValueError(f"remedy {remedy}: argument {key!r} given twice")
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
        from sinder.models.weights import file_metadata

        source = Path(str(getattr(model, "weights_source", "")))
        meta = file_metadata(source) if source.is_file() else {}
        cost["setup_s"] = float(meta[REPAIR_SECONDS_KEY]) if REPAIR_SECONDS_KEY in meta else None
    elif role.get("kind") == "register":
        cost.update(setup_s=None, extra_tokens=int(getattr(model, "num_register_tokens", 0)))  # a full pretraining
    return cost
