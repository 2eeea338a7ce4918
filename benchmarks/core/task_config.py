"""Task profiles as data: ``benchmarks/<package>/profiles/<task>/{paper,smoke}.yaml``, and ``--cfg-options``.

Every profile is a YAML file read by mmengine's ``Config``, so a file may name others in ``_base_`` (a path
relative to it, or a list of paths with distinct keys) and change only what differs: ``smoke.yaml`` starts
from ``./paper.yaml``. Mappings merge key by key, lists and scalars replace, ``_delete_: true`` replaces a
whole mapping. YAML rather than mmengine's ``.py`` configs because profiles are plain numbers and names: data
that a reader (or a non-Python tool) can read without executing anything.

Overrides use mmengine's ``DictAction`` conventions (``key.sub=value``, ``a,b`` or ``[a,b]`` for lists) with
values typed as YAML types them. A key the profile does not hold is refused, so a typo never runs silently.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sinder.cli.cfg_options import CfgOptionsAction, parse_cfg_options, parse_value

__all__ = ["CfgOptionsAction", "apply_overrides", "load_task_config", "parse_cfg_options", "parse_value",
           "split_by_task"]

PROFILE_DIR = "profiles"
# Keys any task may add: read by benchmarks.core.checkpointing for every task that checkpoints.
OPTIONAL_KEYS = ("checkpoint_every", "checkpoint_every_s")
# DataLoader workers under the paper profile: decoding ImageNet JPEGs in the main process would starve the GPU
MAX_LOADER_WORKERS = 8


def default_loader_workers(profile: str, cpus: int | None) -> int:
    """The DataLoader workers of a run without ``--num-workers``: none under ``smoke`` (tiny synthetic images,
    where starting workers costs more than it saves), else ``MAX_LOADER_WORKERS`` capped at ``cpus``, the CPUs of
    the machine the loaders run on (None where the launcher cannot know them, e.g. a cluster job's)."""
    if profile == "smoke":
        return 0
    return MAX_LOADER_WORKERS if cpus is None else max(1, min(MAX_LOADER_WORKERS, cpus))


def profile_file(task_dir: str | Path, name: str, profile: str) -> Path:
    return Path(task_dir) / PROFILE_DIR / name / f"{profile}.yaml"


def task_profiles(task_dir: str | Path, name: str) -> list[str]:
    folder = Path(task_dir) / PROFILE_DIR / name
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_task_config(
    task_dir: str | Path, name: str, profile: str, overrides: Mapping[str, Any] | None = None,
    optional: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The resolved config of task ``name`` under ``profile``, with ``overrides`` (dotted keys) applied;
    ``optional``: dotted keys the task reads that a profile need not hold (an override may add them)."""
    from mmengine.config import Config

    path = profile_file(task_dir, name, profile)
    if not path.is_file():
        known = ", ".join(task_profiles(task_dir, name)) or "none"
        raise ValueError(f"task {name} has no profile {profile!r} ({path} is missing); profiles: {known}")
    config = Config.fromfile(str(path)).to_dict()
    return apply_overrides(config, overrides or {}, where=f"task {name}", optional=optional)


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any], *, where: str,
                    optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A copy of ``config`` with each dotted key of ``overrides`` set; an unknown key or a value of another kind
    than the one it replaces (number, text, true/false, list, mapping) is a ValueError naming it."""
    out = copy.deepcopy(config)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{where}: no config key {'.'.join(parents[: i + 1])!r} (in {dotted}); "
                                 f"keys: {', '.join(sorted(node))}")  # fmt: skip
            node = node[part]
        if leaf not in node and dotted not in (*OPTIONAL_KEYS, *optional):
            prefix = ".".join(parents) + "." if parents else ""
            raise ValueError(f"{where}: no config key {dotted!r}; keys: "
                             f"{', '.join(prefix + k for k in sorted(node))}")  # fmt: skip
        old = node.get(leaf)
        if old is not None and value is not None and _kind(old) != _kind(value):
            raise ValueError(f"{where}: {dotted}={value!r} is {_kind(value)}, the config holds {_kind(old)} "
                             f"({old!r})")  # fmt: skip
        bad = _non_finite(value)
        if bad is not None:
            raise ValueError(f"{where}: {dotted}={value!r}: {bad} is not a finite number")
        node[leaf] = copy.deepcopy(value)
    check_optional_keys(out, where)
    return out


# The keys every task may add (OPTIONAL_KEYS): read by benchmarks.core.checkpointing for every task
OPTIONAL_RANGES: dict[str, Any] = {"checkpoint_every": (1, None), "checkpoint_every_s": "positive"}


@dataclasses.dataclass
class OptionalKeys:
    """The types of OPTIONAL_KEYS (null: no checkpoints by that measure)."""

    checkpoint_every: int | None = None
    checkpoint_every_s: float | None = None


def check_optional_keys(config: Mapping[str, Any], where: str) -> None:
    """A one-line ValueError unless the checkpoint intervals of ``config`` (when it holds them) are a positive
    integer of steps / a positive number of seconds, or null."""
    check_schema(OptionalKeys, {k: config[k] for k in OPTIONAL_KEYS if k in config}, where, OPTIONAL_RANGES)


def _non_finite(value: Any) -> float | None:
    """The first NaN or infinity in ``value`` (a number, or lists and mappings of them), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    for item in items:
        bad = _non_finite(item)
        if bad is not None:
            return bad
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def check_schema(schema: type, values: Mapping[str, Any], where: str,
                 ranges: Mapping[str, tuple[float | None, float | None] | str] | None = None) -> None:
    """A one-line ValueError naming ``where`` and the key unless every value of ``values`` that is a field of
    the dataclass ``schema`` has the field's type (``int``: an integer; ``float``: a number; ``bool``; ``str``;
    ``dict``: a mapping; ``tuple[int, ...]`` / ``list[...]``: a list of such items; ``X | None``: also null) and lies in
    ``ranges[key]``: (lowest, highest), either end None for none, inclusive; or ``"positive"`` (> 0), or a
    tuple of the allowed values (texts, and true/false where a text or a flag is allowed); or ``"nonempty"``
    (a list with at least one item: any range of a list's items also asks for one). Numbers are finite."""
    import typing

    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    for key, value in values.items():
        if key not in names:
            continue
        problem = _type_problem(value, hints[key])
        if problem:
            raise ValueError(f"{where}: {key}={value!r}: expected {problem}")
        bounds = (ranges or {}).get(key, (None, None))
        items = value if isinstance(value, list | tuple) else [value]
        bad = _non_finite(value)
        if bad is not None:
            raise ValueError(f"{where}: {key}={value!r}: {bad} is not a finite number")
        if isinstance(value, list | tuple) and not value and bounds != (None, None):
            raise ValueError(f"{where}: {key}=[]: expected at least one item")
        if bounds == "nonempty":
            continue
        if bounds == "positive":
            if any(item is not None and not item > 0 for item in items):
                raise ValueError(f"{where}: {key}={value!r}: expected a positive number")
            continue
        if any(isinstance(b, str) for b in bounds):  # the allowed values (texts, or texts and true/false)
            if any(not any(item == b and type(item) is type(b) for b in bounds) for item in items):
                raise ValueError(f"{where}: {key}={value!r}: expected one of {', '.join(map(str, bounds))}")
            continue
        low, high = bounds
        for item in items:
            if item is not None and ((low is not None and item < low) or (high is not None and item > high)):
                words = " and ".join(b for b in (f">= {low}" if low is not None else "",
                                                 f"<= {high}" if high is not None else "") if b)  # fmt: skip
                raise ValueError(f"{where}: {key}={value!r}: expected {words}")


_PLURALS = {"an integer": "integers", "a number": "numbers", "true or false": "true/false values", "text": "texts"}


def _type_problem(value: Any, hint: Any) -> str | None:
    """What ``value`` should have been for the type ``hint`` (in words), or None when it fits."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        problem = _type_problem(value, inner[0]) if len(inner) == 1 else None
        return f"{problem} or null" if problem else None
    if origin in (tuple, list):
        item = args[0] if args else Any
        if not isinstance(value, list | tuple) or (origin is tuple and args and args[-1] is not Ellipsis
                                                   and len(value) != len(args)):  # fmt: skip
            size = f" of {len(args)}" if origin is tuple and args and args[-1] is not Ellipsis else ""
            return f"a list{size}"
        problems = [p for p in (_type_problem(v, item) for v in value) if p]
        return f"a list of {_PLURALS.get(problems[0], problems[0])}" if problems else None
    checks = {int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
              float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
              bool: (lambda v: isinstance(v, bool), "true or false"),
              str: (lambda v: isinstance(v, str), "text"),
              dict: (lambda v: isinstance(v, dict), "a mapping")}  # fmt: skip
    hint = origin if origin is dict else hint
    if hint in checks:
        ok, words = checks[hint]
        return None if ok(value) else words
    return None  # Any, ...: not checked here


def split_by_task(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"imagenet_linear.iterations": 100}`` -> ``{"imagenet_linear": {"iterations": 100}}``."""
    out: dict[str, dict[str, Any]] = {}
    for dotted, value in options.items():
        task, sep, key = dotted.partition(".")
        if not sep or not key:
            raise ValueError(f"--cfg-options {dotted}: name the task first, e.g. imagenet_linear.iterations=100")
        out.setdefault(task, {})[key] = value
    return out
