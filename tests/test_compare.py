import json

import pytest

from benchmarks.cli import main
from benchmarks.core import results as R
from benchmarks.core.compare import compare, load_tolerances


def _write(root, label, metrics, task="imagenet_knn", directions=None, profile="smoke"):
    R.ResultStore(root).write(R.make_record(
        task=task, profile=profile, backbone={"label": label, "weights_sha256": (label * 64)[:64]},
        metrics=metrics, metric_directions=directions or dict.fromkeys(metrics, "higher"), hparams={}, config={},
        seed=0, wall_time_s=1.0, device={"type": "cpu"},
    ))  # fmt: skip


def _gate(new, base, *extra, capsys=None):
    code = main(["compare", "--new", str(new), "--baseline", str(base), *extra])
    out = capsys.readouterr() if capsys else None
    return code, out


def test_exit_codes(tmp_path, capsys):
    base, good, bad = tmp_path / "base", tmp_path / "good", tmp_path / "bad"
    _write(base, "dinov2", {"top1": 80.0, "top5": 90.0})
    _write(good, "sinder", {"top1": 79.5, "top5": 91.0})  # -0.5 is inside the default 1% (0.8)
    _write(bad, "sinder", {"top1": 78.0, "top5": 91.0})  # -2.0 is a regression
    code, out = _gate(good, base, capsys=capsys)
    assert code == 0 and "0 regression(s)" in out.out and "sinder vs dinov2" in out.out
    code, out = _gate(bad, base, capsys=capsys)
    assert code == 1 and "REGRESSION" in out.out and "imagenet_knn/top1" in out.out
    code, out = _gate(tmp_path / "missing", base, capsys=capsys)
    assert code == 2 and "no such file" in out.err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.json").write_text("[]")
    code, out = _gate(tmp_path / "junk", base, capsys=capsys)
    assert code == 2 and "x.json" in out.err


def test_lower_is_better_metric(tmp_path):
    base, new = tmp_path / "b", tmp_path / "n"
    _write(base, "m", {"rmse": 0.300}, task="depth_nyu_linear1", directions={"rmse": "lower"})
    _write(new, "m", {"rmse": 0.290}, task="depth_nyu_linear1", directions={"rmse": "lower"})
    rows, _ = compare(R.load_records(new), R.load_records(base))
    assert rows[0].status == "improved"
    rows, _ = compare(R.load_records(base), R.load_records(new))  # swapped: 0.300 vs 0.290 is worse
    assert rows[0].status == "REGRESSION"


def test_tolerance_from_repeated_runs_and_from_file(tmp_path, capsys):
    base, new = tmp_path / "b", tmp_path / "n"
    for value in (80.0, 81.0, 79.0):  # sample sd 1.0 -> tolerance 3.0
        _write(base, "m", {"top1": value})
    _write(new, "m", {"top1": 77.5})  # -2.5: within 3 sd of the repeats, though beyond 1% (0.8)
    rows, _ = compare(R.load_records(new), R.load_records(base))
    assert rows[0].tolerance == pytest.approx(3.0) and "sd of 3 runs" in rows[0].tolerance_source
    assert rows[0].status == "ok"
    tol = tmp_path / "tol.yaml"
    tol.write_text("metrics:\n  imagenet_knn/top1: 1.0\n")
    code, out = _gate(new, base, "--tolerance", str(tol), capsys=capsys)
    assert code == 1 and "| file |" in out.out
    tol.write_text(json.dumps({"metrics": {"top1": {"rel": 0.05}}}))
    tol_json = tmp_path / "tol.json"
    tol_json.write_text(tol.read_text())
    code, _ = _gate(new, base, "--tolerance", str(tol_json), capsys=capsys)
    assert code == 0  # 5% of 80 = 4.0
    tol.write_text("metrics:\n  top1: {typo: 1}\n")
    code, out = _gate(new, base, "--tolerance", str(tol), capsys=capsys)
    assert code == 2 and "bad tolerance" in out.err


def test_nan_and_unmatched(tmp_path, capsys):
    base, new = tmp_path / "b", tmp_path / "n"
    _write(base, "m", {"top1": 80.0})
    _write(new, "m", {"top1": float("nan")})
    rows, _ = compare(R.load_records(new), R.load_records(base))
    assert rows[0].status == "REGRESSION"
    other = tmp_path / "o"
    _write(other, "m", {"top1": 80.0}, task="imagenet_linear")
    code, out = _gate(other, base, capsys=capsys)
    assert code == 2 and "no baseline" in out.err
    assert load_tolerances(None) == {"metrics": {}}
