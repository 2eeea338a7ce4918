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
    list_tasks = _optional("benchmarks.core.registry", "list_tasks")
    if list_tasks:
        sections["tasks"] = {t.name if hasattr(t, "name") else str(t): getattr(t, "description", "") for t in list_tasks()}
    list_suites = _optional("benchmarks.core.registry", "list_suites")
    if list_suites:
        suites = list_suites()
        sections["suites"] = suites if isinstance(suites, dict) else {s: "" for s in suites}
    return sections


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
