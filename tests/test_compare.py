import json
import statistics

import pytest

from benchmarks.cli import main
from benchmarks.core import results as R
from benchmarks.core.compare import compare, load_tolerances


def _write(root, label, metrics, task="imagenet_knn", directions=None, profile="smoke", seed=0, sha=None,
           error=None):
    return R.ResultStore(root).write(R.make_record(
        task=task, profile=profile, backbone={"label": label, "weights_sha256": sha or (label * 64)[:64]},
        metrics=metrics, metric_directions=directions or dict.fromkeys(metrics, "higher"), hparams={}, config={},
        seed=seed, wall_time_s=1.0, device={"type": "cpu"}, error=error,
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
    assert code == 0 and "0 regression(s)" in out.out
    assert "| sinder [other@sindersinder] vs dinov2 [other@dinov2dinov2] |" in out.out
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


def test_the_direction_is_the_tasks_not_the_records(tmp_path):
    base, new, lied = tmp_path / "b", tmp_path / "n", tmp_path / "lied"
    _write(base, "m", {"top1": 80.0}, directions={"top1": "higher"})
    _write(new, "m", {"top1": 70.0}, directions={"top1": "lower"})  # edited: a drop would read as an improvement
    rows, notes = compare(R.load_records(new), R.load_records(base))
    assert (rows[0].direction, rows[0].status) == ("higher", "REGRESSION")
    assert any("records state top1 as lower is better; compared as higher (the task's)" in n for n in notes)
    # Both sides edited: still the task's word (depth RMSE: lower is better), so a rise of RMSE regresses.
    _write(base, "m", {"rmse": 0.300}, task="depth_nyu_linear1", directions={"rmse": "higher"})
    _write(lied, "m", {"rmse": 0.400}, task="depth_nyu_linear1", directions={"rmse": "higher"})
    rows, _ = compare(R.load_records(lied), R.load_records(base / "depth_nyu_linear1"))
    assert (rows[0].direction, rows[0].status) == ("lower", "REGRESSION")


def test_a_task_not_registered_here_takes_the_baselines_direction(tmp_path):
    base, new = tmp_path / "b", tmp_path / "n"
    _write(base, "m", {"err": 0.30}, task="plugin_task", directions={"err": "lower"})
    _write(new, "m", {"err": 0.40}, task="plugin_task", directions={"err": "higher"})  # the new side's word is not taken
    rows, notes = compare(R.load_records(new), R.load_records(base))
    assert (rows[0].direction, rows[0].status) == ("lower", "REGRESSION")
    assert "task plugin_task is not registered here: its metric directions come from the baseline records" in notes


def test_tolerance_from_repeated_runs_and_from_file(tmp_path, capsys):
    base, new = tmp_path / "b", tmp_path / "n"
    for seed, value in enumerate((80.0, 81.0, 79.0)):  # sample sd 1.0 over three seeds -> tolerance 3.0
        _write(base, "m", {"top1": value}, seed=seed)
    _write(new, "m", {"top1": 77.5})  # -2.5: within 3 sd of the repeats, though beyond 1% (0.8)
    rows, _ = compare(R.load_records(new), R.load_records(base))
    assert rows[0].tolerance == pytest.approx(3.0) and "sd of 3 seeds" in rows[0].tolerance_source
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


def test_shared_seeds_take_the_tolerance_from_the_paired_differences(tmp_path):
    """Seeds on both sides: the tolerance is 3 sd of the per-seed differences, not of the baseline's values. A
    drop of 5 on every seed, on data whose own spread across seeds is 10, regresses; the baseline's spread would
    have allowed 30 (a silent pass). Noisy differences of mean -1.3 stay within theirs."""
    base, steady, noisy = tmp_path / "b", tmp_path / "s", tmp_path / "n"
    base_values = (40.0, 50.0, 60.0)
    for seed, (b, s, n) in enumerate(zip(base_values, (35.0, 45.2, 54.8), (45.0, 40.0, 61.0))):
        _write(base, "m", {"top1": b}, seed=seed)
        _write(steady, "m", {"top1": s}, seed=seed)
        _write(noisy, "m", {"top1": n}, seed=seed)
    (row,), _ = compare(R.load_records(steady), R.load_records(base))
    diffs = [s - b for s, b in zip((35.0, 45.2, 54.8), base_values)]
    assert row.tolerance == pytest.approx(max(3 * statistics.stdev(diffs), 0.01 * 50.0))
    assert row.status == "REGRESSION" and "differences on 3 shared seeds" in row.tolerance_source
    (row,), _ = compare(R.load_records(noisy), R.load_records(base))
    diffs = [n - b for n, b in zip((45.0, 40.0, 61.0), base_values)]
    assert row.tolerance == pytest.approx(3 * statistics.stdev(diffs)) and row.status == "ok"


def test_nan_and_unmatched(tmp_path, capsys):
    base, new = tmp_path / "b", tmp_path / "n"
    _write(base, "m", {"top1": 80.0})
    _write(new, "m", {"top1": float("nan")})
    rows, _ = compare(R.load_records(new), R.load_records(base))
    assert rows[0].status == "NOT FINITE"
    other = tmp_path / "o"
    _write(other, "m", {"top1": 80.0}, task="imagenet_linear")
    _write(other, "n", {"top1": 80.0}, task="imagenet_linear")
    code, out = _gate(other, base, capsys=capsys)
    assert code == 1 and "MISSING: baseline m [other@mmmmmmmmmmmm] / imagenet_knn (smoke) has no new record" in out.out
    assert load_tolerances(None) == {"metrics": {}}


def _pair(tmp_path, task_metrics):
    base, new = tmp_path / "base", tmp_path / "new"
    for task, metrics in task_metrics.items():
        _write(base, "m", metrics, task=task)
    return base, new


def test_a_baseline_task_missing_from_the_new_runs_fails_the_gate(tmp_path, capsys):
    base, new = _pair(tmp_path, {"imagenet_knn": {"top1": 80.0}, "imagenet_linear": {"top1": 85.0}})
    _write(new, "m", {"top1": 85.0}, task="imagenet_linear")  # every KNN record deleted from the new runs
    code, out = _gate(new, base, capsys=capsys)
    assert code == 1 and "imagenet_knn (smoke) has no new record" in out.out and "1 missing" in out.out


def test_a_baseline_metric_missing_from_the_new_runs_fails_the_gate(tmp_path, capsys):
    base, new = _pair(tmp_path, {"imagenet_knn": {"top1": 80.0, "top5": 90.0}})
    _write(new, "m", {"top1": 80.0})
    code, out = _gate(new, base, capsys=capsys)
    assert code == 1 and "baseline metric 'top5' is missing from the new records" in out.out


def test_a_failed_task_in_the_new_runs_fails_the_gate(tmp_path, capsys):
    base, new = _pair(tmp_path, {"imagenet_knn": {"top1": 80.0}})
    _write(new, "m", {}, error="OSError: [Errno 28] No space left on device")
    code, out = _gate(new, base, capsys=capsys)
    assert code == 1 and "FAILED TASK: m / imagenet_knn (smoke) failed: OSError" in out.out


@pytest.mark.parametrize("text, needle", [
    ("metrics:\n  imagenet_lienar/top1: 1.0\n", "'imagenet_lienar/top1' (no task 'imagenet_lienar'"),
    ("metrics:\n  imagenet_knn/top9: 1.0\n", "'imagenet_knn/top9' (task imagenet_knn has metrics top1"),
    ("metrics:\n  top9: 1.0\n", "'top9' (no such metric"),
    ("defaults: {rel: 0.5}\n", "unknown key(s) ['defaults']"),
])  # fmt: skip
def test_a_typo_in_the_tolerance_file_is_an_error(tmp_path, capsys, text, needle):
    base, new = _pair(tmp_path, {"imagenet_knn": {"top1": 80.0}})
    _write(new, "m", {"top1": 80.0})
    tol = tmp_path / "tol.yaml"
    tol.write_text(text)
    code, out = _gate(new, base, "--tolerance", str(tol), capsys=capsys)
    assert code == 2 and needle in out.err


def test_duplicate_baseline_records_never_tighten_the_tolerance(tmp_path, capsys):
    once, twice, new = tmp_path / "once", tmp_path / "twice", tmp_path / "new"
    _write(once, "m", {"top1": 80.0})
    for _ in range(2):
        _write(twice, "m", {"top1": 80.0})  # identical repeats: no spread to learn from
    _write(new, "m", {"top1": 79.5})  # -0.5 is inside the default 1% (0.8)
    tol = tmp_path / "tol.yaml"
    tol.write_text("default: {abs: 0.6}\n")
    for base in (once, twice):
        assert _gate(new, base, capsys=capsys)[0] == 0
        code, out = _gate(new, base, "--tolerance", str(tol), capsys=capsys)
        assert code == 0 and "| 0.6000 | file default |" in out.out
    rows, _ = compare(R.load_records(new), R.load_records(twice))
    assert rows[0].n_baseline == 1 and rows[0].tolerance == pytest.approx(0.8)


def test_two_checkpoints_under_one_label_are_never_averaged(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "ckpt", {"top1": 85.0}, sha="a" * 64)
    _write(base, "ckpt", {"top1": 90.0}, sha="b" * 64)
    _write(new, "ckpt", {"top1": 85.0}, sha="a" * 64)
    _write(new, "ckpt", {"top1": 88.0}, sha="b" * 64)  # -2.0 on the second checkpoint
    rows, _ = compare(R.load_records(new), R.load_records(base))
    assert sorted((r.baseline, r.new, r.status) for r in rows) == [(85.0, 85.0, "ok"), (90.0, 88.0, "REGRESSION")]


def test_the_shipped_tolerance_file_fits_the_table3_suite(tmp_path, capsys):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "tolerances.yaml"
    base, new = tmp_path / "base", tmp_path / "new"
    for task in ("imagenet_knn", "imagenet_linear"):
        _write(base, "m", {"top1": 80.0, "top5": 95.0}, task=task)
    _write(new, "m", {"top1": 79.8, "top5": 95.0}, task="imagenet_knn")  # -0.2: inside the file's 0.3
    _write(new, "m", {"top1": 79.4, "top5": 95.0}, task="imagenet_linear")  # -0.6: beyond the file's 0.5
    code, out = _gate(new, base, "--tolerance", str(shipped), capsys=capsys)
    assert code == 1 and "1 regression(s) in 4 metric(s): imagenet_linear/top1" in out.out
    assert "MISSING" not in out.out
