"""`sinder-bench ls`: what this installation knows: backbones, datasets, tasks and suites."""

from __future__ import annotations


def collect() -> dict[str, dict[str, str]]:
    """Each section's names with their one-line titles."""
    from benchmarks.core.registry import get_suite, get_task, list_suites, list_tasks
    from benchmarks.data import DATASETS
    from sinder.models.weights import list_backbones

    return {
        "backbones": list_backbones(),
        "datasets": {name: spec.description for name, spec in DATASETS.items()},
        "tasks": {name: _task_line(get_task(name)) for name in list_tasks()},
        "suites": {name: _suite_line(get_suite(name)) for name in list_suites()},
    }


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
        print(f"{title}:")
        entries = sections[title]
        width = max((len(k) for k in entries), default=0)
        for key, text in entries.items():
            print(f"  {key:<{width}}  {text}".rstrip())
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("ls", help="list backbones, datasets, tasks and suites")
    parser.add_argument("what", nargs="?", choices=["backbones", "datasets", "tasks", "suites"])
    parser.set_defaults(func=run)
