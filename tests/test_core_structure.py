"""The shape of benchmarks/core: no import circle among its modules, no remedy named in it, and a task
discovery skip list that names only packages that exist and hold no task."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import benchmarks
from benchmarks.core import registry
from benchmarks.core.remedy import list_remedies

CORE = Path(benchmarks.__file__).resolve().parent / "core"
# Still naming a remedy, to be made generic by their own change: the report maps a SINDER repair to the paper's
# "sinder" row, and the remedies table labels a register release "registers".
NAMES_A_REMEDY = {"report.py", "remedies_report.py"}


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports count too), as dotted names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import runner` is a module
    return out


def import_graph(folder: Path, package: str) -> dict[str, set[str]]:
    modules = {f"{package}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: imported_modules(path, package) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a list that starts and ends with the same module), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "runner.py").write_text("def run():\n    from .workers import go\n")
    (pkg / "workers.py").write_text("from pkg.job import Job\n")
    (pkg / "job.py").write_text("from . import runner\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg.job", "pkg.runner", "pkg.workers", "pkg.job"]
    (pkg / "job.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


def test_core_has_no_import_cycle():
    graph = import_graph(CORE, "benchmarks.core")
    assert "benchmarks.core.job" in graph["benchmarks.core.workers"]  # the graph sees the imports
    assert "benchmarks.core.job" in graph["benchmarks.core.runner"]
    assert find_cycle(graph) is None


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants of ``tree`` that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]  # fmt: skip


def test_no_core_module_names_a_remedy_or_imports_the_remedy_modules():
    names = list_remedies()
    assert {"clamp", "ttr", "sinder", "registers"} <= set(names)
    for path in sorted(p for p in CORE.glob("*.py") if p.name not in NAMES_A_REMEDY):
        tree = ast.parse(path.read_text())
        imports = imported_modules(path, "benchmarks.core")
        assert not any(m.startswith("benchmarks.remedies") for m in imports), path.name
        for text in _code_strings(tree):
            assert text not in names, f"{path.name} names remedy {text!r}"
            assert not any(f"+{name}" in text for name in names), f"{path.name}: {text!r}"


def test_the_task_skip_list_names_existing_packages_without_tasks():
    packages = {info.name for info in pkgutil.iter_modules(benchmarks.__path__) if info.ispkg}
    assert registry._NOT_TASK_PACKAGES <= packages
    for name in registry._NOT_TASK_PACKAGES:
        for leaf in ("task", "tasks"):
            assert importlib.util.find_spec(f"benchmarks.{name}.{leaf}") is None, f"benchmarks.{name} holds a task"
    # The census task lives in a task package of its own and is found by discovery.
    assert type(registry.get_task("defect_census")).__module__ == "benchmarks.census.task"
    assert registry.get_task("defect_census").task_dir().name == "census"


@pytest.mark.parametrize("profile", ["paper", "smoke"])
def test_the_census_keeps_its_profiles(profile):
    config = registry.get_task("defect_census").config(profile)
    assert {"split", "n_images", "resolution", "eq5_mu", "mu"} <= set(config)
