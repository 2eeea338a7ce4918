"""Benchmark tasks and suites by name.

A task is an adapter with a small interface (:class:`Task`) registered with :func:`register_task`. Task modules
are found without a central list: every ``benchmarks/<package>/task.py`` (or ``tasks.py``) is imported on first
use, and installed packages may add modules through the ``sinder_bench.tasks`` entry-point group. A task
module that fails to import (an optional dependency missing) is remembered with its error, so a suite naming
its tasks reports them as "not available" instead of crashing.

Suite ``tableN`` is every task that declares ``table = "tableN"`` (ordered by the paper table's columns): a
task is put in its table once, on the task. Other suites are YAML files in ``benchmarks/suites/`` (``all``,
``remedies``): ``tasks:`` (an ordered list of task names) and/or ``include:`` (other suites, whose tasks come
first, in order, without duplicates).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry_helper import Registry, failed_imports_hint, import_discovered, modules_in

SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"
PAPER_DIR = Path(__file__).resolve().parents[1] / "paper"  # the paper's numbers; columns order the table suites
_TABLE_NAME = re.compile(r"table\d+")
PROFILES = ("paper", "smoke")
ENTRY_POINT_GROUP = "sinder_bench.tasks"
# Packages under benchmarks/ that hold shared machinery, not tasks (remedies register into core.remedy).
_NOT_TASK_PACKAGES = {"core", "data", "perf", "remedies"}


@dataclass(frozen=True)
class Metric:
    """A number a task reports; ``higher_is_better`` drives deltas and the regression gate."""

    name: str
    higher_is_better: bool = True
    description: str = ""


class Task:
    """Base class of benchmark adapters. Subclasses set the class attributes and implement ``run``.

    ``run(backbone, ctx)`` evaluates a frozen backbone (a module with ``get_intermediate_layers``) and returns
    ``{"metrics": {name: float}, "hparams": {chosen hyper-parameters}}``; ``ctx`` is a
    :class:`benchmarks.core.job.TaskContext` (profile, dataset paths, cache, device, seed, resolved config).
    An optional ``"details"`` entry (JSON-able) is kept in the run record. A task whose smoke data is not a
    ``benchmarks.data.synth`` twin may define ``synthesize(name, out_dir, seed)``.
    """

    name: str = ""
    version: str = "1"  # bump when a change makes earlier numbers incomparable: --resume then redoes the task
    table: str = ""  # the paper table this task fills, e.g. "table3"
    title: str = ""
    metrics: tuple[Metric, ...] = ()
    # True for a task that repairs its input itself (the Tables 6-7 ablations): the runner gives it the run's
    # first backbone only, since the paper applies it to DINOv2, not to an already repaired twin.
    first_backbone_only: bool = False
    optional_keys: tuple[str, ...] = ()  # dotted config keys the task reads that its profiles need not hold

    def datasets_needed(self, profile: str) -> list[str]:
        """Datasets the task reads under ``profile``: ``benchmarks.data`` names, optionally ``name:split``.

        The runner checks each before any work (a split's layout is opened and checked) under ``paper``, and
        writes synthetic twins for ``smoke``; the task then finds the folder with ``ctx.dataset_root(name)``.
        """
        return []

    def config(self, profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The resolved configuration (schedule, resolution, ...) of ``profile`` with ``overrides`` (dotted keys,
        ``--cfg-options``) applied; recorded in every run record. Read from ``profiles/<name>/<profile>.yaml``
        beside the task's module (see benchmarks.core.task_config); a task without that folder has none."""
        from benchmarks.core.task_config import apply_overrides, load_task_config, task_profiles

        folder = self.task_dir()
        if not task_profiles(folder, self.name):
            if profile not in PROFILES:
                raise ValueError(f"task {self.name}: unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
            return apply_overrides({}, overrides or {}, where=f"task {self.name}", optional=self.optional_keys)
        return load_task_config(folder, self.name, profile, overrides, optional=self.optional_keys)

    @classmethod
    def task_dir(cls) -> Path:
        """The folder of the module defining the task (its ``profiles/`` live there)."""
        return Path(sys.modules[cls.__module__].__file__).resolve().parent

    def run(self, backbone, ctx) -> dict[str, Any]:
        raise NotImplementedError

    def disk_bytes(self, profile: str, config: Mapping[str, Any], backbone, images: Callable[[str], int]) -> int:
        """An estimate of the bytes the task writes into the cache for one backbone (feature caches, head
        checkpoints, repairs), from its resolved ``config`` of ``profile``, ``backbone`` (a
        :class:`benchmarks.core.disk.BackboneSize`) and ``images("name:split")``, the number of images of a
        dataset split it reads. The run's free-space preflight adds them up; 0: nothing worth counting."""
        return 0

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


_TASKS: dict[str, Task] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def _discover_tasks() -> None:
    # the task packages are found on disk: core never imports a task package except through discovery
    folder = Path(__file__).resolve().parents[1]
    tasks = modules_in(folder, "benchmarks", packages=True, skip=_NOT_TASK_PACKAGES, leaves=("task", "tasks"))
    import_discovered(tasks, ENTRY_POINT_GROUP, _IMPORT_ERRORS)


# Looked up through a lambda: a test may swap ``_TASKS`` for a copy and register into that.
TASKS = Registry("task", table=lambda: _TASKS, discover=_discover_tasks, plural="registered tasks",
                 hint=failed_imports_hint("task", _IMPORT_ERRORS))  # fmt: skip
register_task = TASKS.register


def registrar(registry: Callable[[], dict[str, Any]], kind: str):
    """A class-or-instance decorator adding to ``registry()`` under the object's ``name`` (see
    :class:`benchmarks.core.registry_helper.Registry`, which tasks, remedies and datasets use)."""
    return Registry(kind, table=registry).register


def discover(force: bool = False) -> None:
    """Import every task module once (``benchmarks/<pkg>/task.py``, ``tasks.py``, and entry points)."""
    TASKS.discover(force)


def list_tasks() -> list[str]:
    return TASKS.names()


def get_task(name: str) -> Task:
    return TASKS.get(name)


def import_errors() -> dict[str, str]:
    """Task modules that exist but failed to import, with the error (why their tasks are not available)."""
    discover()
    return dict(_IMPORT_ERRORS)


# ----------------------------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class Suite:
    name: str
    title: str = ""
    tasks: tuple[str, ...] = ()
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


def _suite_file(name: str, suites_dir: Path) -> Path:
    return suites_dir / f"{name}.yaml"


def _table_suite(name: str) -> Suite | None:
    """Suite ``tableN``: the tasks that declare ``table = "tableN"`` (the one declaration of task to table), in
    the order of that paper table's columns (``benchmarks/paper/tableN.yaml``); None when no task declares it."""
    import yaml

    tasks = [t for t in list_tasks() if get_task(t).table == name]
    if not tasks or not _TABLE_NAME.fullmatch(name):
        return None
    paper = PAPER_DIR / f"{name}.yaml"
    data = (yaml.safe_load(paper.read_text()) or {}) if paper.is_file() else {}
    order = [str(c.get("task")) for c in data.get("columns") or [] if isinstance(c, dict)]
    ranked = sorted(tasks, key=lambda t: (order.index(t) if t in order else len(order), t))
    title = f"Table {name.removeprefix('table')}: {data.get('title', '')}".rstrip(": ")
    return Suite(name=name, title=title, tasks=tuple(ranked), source=f"tasks declaring table {name!r}")


def list_suites(suites_dir: str | Path | None = None) -> list[str]:
    folder = Path(suites_dir) if suites_dir else SUITES_DIR
    tables = {get_task(t).table for t in list_tasks()}
    return sorted({p.stem for p in folder.glob("*.yaml")} | {t for t in tables if _TABLE_NAME.fullmatch(t)})


def get_suite(name: str, suites_dir: str | Path | None = None, _seen: tuple[str, ...] = ()) -> Suite:
    """The suite ``name`` (a YAML file), or a one-task suite when ``name`` is a registered task; several of
    either, comma-separated (``table3,table4``), are one suite of their tasks in order, without repeats."""
    import yaml

    folder = Path(suites_dir) if suites_dir else SUITES_DIR
    if "," in name:
        parts = [get_suite(p.strip(), suites_dir, _seen) for p in name.split(",") if p.strip()]
        if not parts:
            raise KeyError(f"suite {name!r} names no suite or task")
        meta: dict[str, Any] = {}
        for part in parts:  # lists (e.g. smoke_remedies) join, other keys keep the first suite's
            for key, value in part.meta.items():
                if isinstance(value, list) and isinstance(meta.get(key), list):
                    meta[key] = list(dict.fromkeys([*meta[key], *value]))
                else:
                    meta.setdefault(key, value)
        return Suite(name=",".join(p.name for p in parts), title=" + ".join(p.title or p.name for p in parts),
                     tasks=tuple(dict.fromkeys(t for p in parts for t in p.tasks)),
                     source=", ".join(p.source for p in parts), meta=meta)  # fmt: skip
    path = _suite_file(name, folder)
    if not path.is_file():
        if (table := _table_suite(name)) is not None:
            return table
        if name in list_tasks():
            return Suite(name=name, title=f"single task {name}", tasks=(name,), source="task")
        raise KeyError(
            f"unknown suite {name!r}; suites: {', '.join(list_suites(folder)) or 'none'} "
            f"(or a single task: {', '.join(list_tasks()) or 'none registered'})"
        )
    if name in _seen:
        raise ValueError(f"suite {name!r} includes itself: {' -> '.join((*_seen, name))}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a suite file must be a mapping with 'tasks' and/or 'include'")
    tasks: list[str] = []
    for sub in data.get("include") or []:
        tasks += [t for t in get_suite(str(sub), folder, (*_seen, name)).tasks if t not in tasks]
    for entry in data.get("tasks") or []:
        if not isinstance(entry, str):
            raise ValueError(f"{path}: task entries must be task names, got {entry!r}")
        if entry not in tasks:
            tasks.append(entry)
    meta = {k: v for k, v in data.items() if k not in {"name", "title", "tasks", "include"}}
    return Suite(name=name, title=str(data.get("title", "")), tasks=tuple(tasks), source=str(path), meta=meta)
