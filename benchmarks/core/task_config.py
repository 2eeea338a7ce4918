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
        node[leaf] = copy.deepcopy(value)
    return out


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


def split_by_task(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"imagenet_linear.iterations": 100}`` -> ``{"imagenet_linear": {"iterations": 100}}``."""
    out: dict[str, dict[str, Any]] = {}
    for dotted, value in options.items():
        task, sep, key = dotted.partition(".")
        if not sep or not key:
            raise ValueError(f"--cfg-options {dotted}: name the task first, e.g. imagenet_linear.iterations=100")
        out.setdefault(task, {})[key] = value
    return out
