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


# Where a mean/std may be written: the ImageNet statistics' home, the families' defaults (the adapter) and the
# backbone description that reads a checkpoint's own (preprocessor_config.json's "do_normalize": false).
MEAN_STD_HOMES = ("sinder/utils/images.py", "sinder/models/adapter.py", "sinder/models/backbone.py")


def _three_numbers(expr: ast.AST) -> bool:
    """``(a, b, c)`` / ``[a, b, c]`` of number literals, or ``(a,) * 3``: how a mean or std is written."""
    def numbers(node):
        return isinstance(node, ast.Constant) and type(node.value) in (int, float)

    if isinstance(expr, ast.Tuple | ast.List) and len(expr.elts) == 3 and all(numbers(e) for e in expr.elts):
        return True
    sides = (expr.left, expr.right) if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult) else ()
    return any(isinstance(s, ast.Tuple | ast.List) and len(s.elts) == 1 and numbers(s.elts[0]) for s in sides)


def mean_std_literals() -> list[str]:
    """``path:line name`` of each name holding 'mean' or 'std' bound to an expression with three number
    literals in it (a normalisation written out), in sinder/ and benchmarks/."""
    found = []
    for path in SOURCES:
        for name, expr, line in _bindings(ast.parse(path.read_text(), str(path))):
            if ("mean" in name.lower() or "std" in name.lower()) and any(_three_numbers(e) for e in ast.walk(expr)):
                found.append(f"{path.relative_to(ROOT)}:{line} {name}")
    return sorted(set(found))


def patch_multiple_literals() -> list[str]:
    """``path:line name`` of each integer literal in benchmarks/ bound to a name holding 'patch' or 'multiple'
    (``pad_multiple=14``, ``patch_size = 16``) or given to center_pad as its multiple: a task's own patch size."""
    found = []
    for path in SOURCES:
        if path.relative_to(ROOT).parts[0] != "benchmarks":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for name, expr, line in _bindings(tree):
            if ("patch" in name.lower() or "multiple" in name.lower()) and isinstance(expr, ast.Constant) \
                    and type(expr.value) is int:
                found.append(f"{path.relative_to(ROOT)}:{line} {name}")
        for node in ast.walk(tree):
            callee = getattr(node, "func", None)
            name = getattr(callee, "id", getattr(callee, "attr", ""))
            if isinstance(node, ast.Call) and name.startswith("center_pad") and len(node.args) > 1 \
                    and isinstance(node.args[1], ast.Constant):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} center_pad")
    return sorted(set(found))


def test_a_mean_or_std_is_written_only_in_the_model_description():
    """No task or data loader normalises with statistics of its own: each asks the backbone
    (benchmarks.core.preprocessing), whose description reads them from the checkpoint or its family."""
    found = [f for f in mean_std_literals() if not f.startswith(MEAN_STD_HOMES)]
    assert found == [], "ask benchmarks.core.preprocessing.preprocessing_of(backbone) for the mean/std"
    from sinder.models.adapter import FAMILY_MEAN_STD

    # each family's values written anywhere else (0.5 is too common a number to hunt)
    family_values = {v for mean, std in FAMILY_MEAN_STD.values() for v in (*mean, *std)} - {0.5}
    assert [f for f in number_literals(family_values) if not f.startswith(MEAN_STD_HOMES)] == []
    # and no benchmark reaches for the ImageNet statistics directly
    users = [str(p.relative_to(ROOT)) for p in SOURCES if p.relative_to(ROOT).parts[0] == "benchmarks"
             and ("IMAGENET_MEAN" in p.read_text() or "IMAGENET_STD" in p.read_text())]  # fmt: skip
    assert users == []


def test_no_benchmark_writes_a_patch_multiple():
    assert patch_multiple_literals() == [], "pad to the backbone's patch size (preprocessing_of(model).patch_size)"


def test_the_mean_std_and_patch_scans_find_the_patterns(tmp_path, monkeypatch):
    fake = tmp_path / "benchmarks" / "fake.py"
    fake.parent.mkdir()
    fake.write_text(
        "MEAN = (0.485, 0.456, 0.406)\n"
        "t = Normalize(mean=[0.5, 0.5, 0.5], std=(0.5,) * 3)\n"
        "cfg = {'pixel_std': [58.395, 57.12, 57.375]}\n"
        "backbone = dict(pad_multiple=14)\n"
        "x, _ = center_pad(x, 16)\n"
        "patch = 14\n"
        "fine = dict(pad_multiple=model.patch_size, mean=pre.mean)\n"
    )
    monkeypatch.setitem(globals(), "SOURCES", [fake])
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert mean_std_literals() == ["benchmarks/fake.py:1 MEAN", "benchmarks/fake.py:2 mean", "benchmarks/fake.py:2 std",
                                   "benchmarks/fake.py:3 pixel_std"]  # fmt: skip
    assert patch_multiple_literals() == ["benchmarks/fake.py:4 pad_multiple", "benchmarks/fake.py:5 center_pad",
                                         "benchmarks/fake.py:6 patch"]  # fmt: skip


def test_mmseg_configs_normalise_with_the_backbones_mean_std_and_pad_to_its_patch():
    pytest.importorskip("mmengine")
    from benchmarks.core.preprocessing import family_preprocessing
    from benchmarks.segmentation.config import DATASETS, SETTINGS, load_config, resolve_config

    for dataset in DATASETS:
        for setting in SETTINGS:
            raw = load_config(dataset, setting).model
            assert raw.data_preprocessor.mean is None and raw.backbone.pad_multiple is None  # the backbone's
            for family, patch in (("dinov2", 14), ("siglip", 16)):
                cfg = resolve_config(load_config(dataset, setting), data_root="d", embed_dim=8, work_dir="w",
                                     preprocessing=family_preprocessing(family, patch))  # fmt: skip
                pre = cfg.model.data_preprocessor
                if family == "dinov2":  # mmseg's own ADE20k/VOC configs write these 0-255 values (255 * 0.485, ...)
                    assert pre.mean == [123.675, 116.28, 103.53] and pre.std == [58.395, 57.12, 57.375]
                else:
                    assert pre.mean == [127.5] * 3 and pre.std == [127.5] * 3
                assert cfg.model.backbone.pad_multiple == patch
