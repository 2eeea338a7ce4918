"""Each shared default is written once: a second literal in sinder/ or benchmarks/ source fails here.

The scan reads the code (ast), not comments or docstrings: a default is a value bound to a name (a parameter
default, a keyword argument, an assignment, a dataclass field, a dict entry, an argparse option's ``default=``).
"""

from __future__ import annotations

import argparse
import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for top in ("sinder", "benchmarks") for p in (ROOT / top).rglob("*.py"))


def _constants(node: ast.AST) -> set:
    return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, int | float)
            and not isinstance(n.value, bool)}  # fmt: skip


def _bindings(tree: ast.AST) -> Iterator[tuple[str, ast.AST, int]]:
    """(name, value expression, line) of every value the code binds to a name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True):
                yield arg.arg, default, default.lineno
            for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
                if default is not None:
                    yield arg.arg, default, default.lineno
        elif isinstance(node, ast.Call):
            option = next((a.value for a in node.args[:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)
                           and a.value.startswith("--")), None)  # fmt: skip
            for kw in node.keywords:
                if kw.arg == "default" and option:
                    yield option.lstrip("-").replace("-", "_"), kw.value, kw.value.lineno
                elif kw.arg:
                    yield kw.arg, kw.value, kw.value.lineno
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
                if name:
                    yield name, node.value, node.lineno
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    yield key.value, value, value.lineno


def literal_bindings(word: str, value: float) -> list[str]:
    """``path:line name`` of each place in sinder/ and benchmarks/ binding a name containing ``word`` to an
    expression holding the literal ``value``."""
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for name, expr, line in _bindings(tree):
            if word in name.lower() and value in _constants(expr):
                found.append(f"{path.relative_to(ROOT)}:{line} {name}")
    return sorted(set(found))


def number_literals(values: set[float]) -> list[str]:
    """``path:line`` of each numeric literal equal to one of ``values`` anywhere in the code."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and type(node.value) is float and node.value in values:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return sorted(set(found))


@pytest.mark.parametrize(("word", "value", "home"), [
    ("resolution", 518, "sinder/utils/images.py:DEFAULT_RESOLUTION"),
    ("sigma", 3, "sinder/defects/detect.py:DEFAULT_SIGMA"),
    ("samples", 100_000, "sinder/defects/linearize.py:DEFAULT_N_SAMPLES"),
    ("workers", 8, "benchmarks/core/task_config.py:MAX_LOADER_WORKERS"),
])  # fmt: skip
def test_each_default_has_one_literal(word, value, home):
    path, name = home.split(":")
    found = literal_bindings(word, value)
    home_lines = [f for f in found if f.startswith(f"{path}:") and f.endswith(f" {name}")]
    assert len(home_lines) == 1, f"{name} = {value} is not in {path}"
    others = [f for f in found if f not in home_lines]
    assert others == [], f"write {name} (from {path}) instead of the literal {value}"


def test_the_scan_finds_a_second_literal(tmp_path, monkeypatch):
    """The scan itself: every way of writing a default that the tests above must catch."""
    fake = tmp_path / "fake.py"
    fake.write_text(
        "def f(resolution=518, *, n_samples=100_000): ...\n"
        "g(sigma=3)\n"
        "cfg = {'resolution': 518}\n"
        "parser.add_argument('--num-workers', type=int, default=min(8, cpus))\n"
        "workers = 0 if smoke else 8\n"
    )
    monkeypatch.setitem(globals(), "SOURCES", [fake])
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert literal_bindings("resolution", 518) == ["fake.py:1 resolution", "fake.py:3 resolution"]
    assert literal_bindings("samples", 100_000) == ["fake.py:1 n_samples"]
    assert literal_bindings("sigma", 3) == ["fake.py:2 sigma"]
    assert literal_bindings("workers", 8) == ["fake.py:4 num_workers", "fake.py:5 workers"]


def test_the_defaults_reach_every_reader():
    """The values, and that the functions and configs that default them use the one constant."""
    from benchmarks.core.task_config import MAX_LOADER_WORKERS, default_loader_workers
    from sinder.cli import analyze as analyze_cli
    from sinder.defects import census, detect, linearize
    from sinder.plots import analysis
    from sinder.repair.config import RepairConfig
    from sinder.utils.images import DEFAULT_RESOLUTION

    assert (DEFAULT_RESOLUTION, detect.DEFAULT_SIGMA, linearize.DEFAULT_N_SAMPLES, MAX_LOADER_WORKERS) == (
        518, 3, 100_000, 8)
    config = RepairConfig()
    assert (config.resolution, config.sigma, config.n_samples) == (518, 3, 100_000)
    params = inspect.signature(analysis.analyze).parameters
    assert (params["resolution"].default, params["sigma"].default, params["n_samples"].default) == (518, 3, 100_000)
    for fn in (census.compare_checkpoints, linearize.compute_directions, linearize.linearized_directions,
               linearize.singular_defect_directions):
        assert inspect.signature(fn).parameters["n_samples"].default == 100_000, fn.__name__
    parser = argparse.ArgumentParser()
    analyze_cli.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["analyze", "--backbone", "x", "--images", "y", "--out", "z"])
    assert (args.sigma, args.n_samples) == (3, 100_000)
    assert args.resolution is None  # the preset's scale, else DEFAULT_RESOLUTION (tests/test_first_hour.py)
    # DataLoader workers: none for smoke; the paper profile's cap, at most the CPUs when they are known
    assert default_loader_workers("smoke", 64) == 0
    assert [default_loader_workers("paper", c) for c in (None, 2, 8, 64)] == [8, 2, 8, 8]


IMAGENET_LITERALS = {0.485, 0.456, 0.406, 0.229, 0.224, 0.225, 123.675, 116.28, 103.53, 58.395, 57.12, 57.375}


def test_imagenet_mean_and_std_are_written_once():
    assert number_literals(IMAGENET_LITERALS) == ["sinder/utils/images.py:16", "sinder/utils/images.py:17"]


def test_mmseg_configs_normalise_with_the_imagenet_mean_and_std():
    pytest.importorskip("mmengine")
    from benchmarks.segmentation.config import DATASETS, SETTINGS, load_config

    for dataset in DATASETS:
        for setting in SETTINGS:
            pre = load_config(dataset, setting).model.data_preprocessor
            # mmseg's own ADE20k/VOC configs write these 0-255 values (the rounding of 255 * 0.485, ...)
            assert pre.mean == [123.675, 116.28, 103.53] and pre.std == [58.395, 57.12, 57.375]
