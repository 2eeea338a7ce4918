"""`sinder-bench ls`: what this installation knows: backbones, datasets, tasks and suites."""

from __future__ import annotations

import importlib


def _optional(module: str, attr: str):
    """A listing provided by a capability that may not be in this checkout yet."""
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as err:
        if err.name and module.startswith(err.name):
            return None
        raise


def collect() -> dict[str, dict[str, str]]:
    from sinder.weights import list_backbones

    sections: dict[str, dict[str, str]] = {"backbones": list_backbones()}
    datasets = _optional("benchmarks.data", "DATASETS")
    if datasets:
        sections["datasets"] = {name: getattr(spec, "description", "") for name, spec in datasets.items()}
    registry = _optional("benchmarks.core.registry", "get_task") and importlib.import_module("benchmarks.core.registry")
    if registry:
        sections["tasks"] = {name: _task_line(registry.get_task(name)) for name in registry.list_tasks()}
        sections["suites"] = {name: _suite_line(registry.get_suite(name)) for name in registry.list_suites()}
    return sections


def _task_line(task) -> str:
    """``Table 3: ...`` title, and the paper table it fills when the title does not say it."""
    title = getattr(task, "title", "") or ""
    table = getattr(task, "table", "") or ""
    if table and table.replace("table", "Table ") not in title:
        title = f"{title} ({table})" if title else table
    return title


def _suite_line(suite) -> str:
    """The suite's title and how many tasks it runs."""
    count = f"{len(suite.tasks)} task{'s' if len(suite.tasks) != 1 else ''}"
    return f"{suite.title} ({count})" if suite.title else count


def run(args) -> int:
    sections = collect()
    wanted = [args.what] if args.what else list(sections)
    for title in wanted:
        if title not in sections:
            print(f"{title}: none in this installation")
            continue
        print(f"{title}:")
        entries = sections[title]
        width = max((len(k) for k in entries), default=0)
        for key, text in entries.items():
            text = ", ".join(text) if isinstance(text, (list, tuple)) else str(text)
            print(f"  {key:<{width}}  {text}".rstrip())
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("ls", help="list backbones, datasets, tasks and suites")
    parser.add_argument("what", nargs="?", choices=["backbones", "datasets", "tasks", "suites"])
    parser.set_defaults(func=run)
