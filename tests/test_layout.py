"""The layout's rules, checked on the source: the import graph of sinder/ and benchmarks/ has no circle, the
method never imports the benchmarks, core imports no task or remedy package, and a concept with one home
(sha256, the ImageNet statistics) is not defined a second time. Imports inside functions count: hiding a
circle in a function is still a circle."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sinder", "benchmarks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Repo modules that ``name`` imports anywhere in its body (a package's submodule when one is named)."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of an attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_hidden_circle(tmp_path):
    # the check above could pass by never seeing an edge: the same code on a known circle
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_method_never_imports_the_benchmarks():
    offenders = {m: sorted(t for t in targets if t.startswith("benchmarks"))
                 for m, targets in import_graph().items() if m.startswith("sinder")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_methods_layers_never_import_its_command_line():
    # sinder.cli is the top layer: the model, the defect maths, the repair and the helpers must not need it
    offenders = {m: sorted(t for t in targets if t.startswith("sinder.cli"))
                 for m, targets in import_graph().items() if m.startswith("sinder.") and not m.startswith("sinder.cli")}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_core_imports_no_task_or_remedy_package():
    allowed = ("benchmarks.core", "benchmarks.data", "sinder")
    offenders = {m: sorted(t for t in targets if not t.startswith(allowed))
                 for m, targets in import_graph().items() if m.startswith("benchmarks.core")}
    assert {m: t for m, t in offenders.items() if t} == {}


def _source_files():
    for pkg in PACKAGES:
        yield from (ROOT / pkg).rglob("*.py")


def test_sha256_has_one_home():
    home = ROOT / "sinder" / "utils" / "hashing.py"
    users = [str(p.relative_to(ROOT)) for p in _source_files() if p != home and "hashlib" in p.read_text()]
    assert users == [], "hash through sinder.utils.hashing"


def test_moved_modules_are_the_new_modules_with_a_warning():
    import importlib

    from sinder._deprecated import MOVED

    for old, new in MOVED.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert module.__name__ == new and module.__spec__.name == new
        assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in caught), old


@pytest.mark.parametrize("name", ["RepairRun", "RepairConfig", "RepairResult", "repair_checkpoint"])
def test_documented_repair_names_stay_where_the_readme_says(name):
    import sinder.repair

    assert getattr(sinder.repair, name).__name__ == name
