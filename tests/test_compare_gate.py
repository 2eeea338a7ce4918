"""Issue 23, 'The gate (compare)': each way the gate passed silently or failed with a traceback, as a test.

Exit codes: 0 pass, 1 fail, 2 unusable input (one line ``error: ...`` on stderr, no traceback)."""

import json
import shutil

import pytest

from benchmarks.cli import main
from benchmarks.core import results as R
from benchmarks.core.compare import CompareError, load_tolerances


def _write(root, label, metrics, task="imagenet_knn", seed=0, sha=None, error=None, config=None, directions=None):
    return R.ResultStore(root).write(R.make_record(
        task=task, profile="smoke", backbone={"label": label, "weights_sha256": sha or (label * 64)[:64]},
        metrics=metrics, metric_directions=directions or dict.fromkeys(metrics, "higher"), hparams={},
        config=config if config is not None else {"iterations": 3}, seed=seed, wall_time_s=1.0,
        device={"type": "cpu"}, error=error,
    ))  # fmt: skip


def _gate(capsys, new, base, *extra):
    code = main(["compare", "--new", *map(str, new if isinstance(new, list) else [new]), "--baseline", str(base),
                 *extra])  # fmt: skip
    out = capsys.readouterr()
    if code == 2:  # unusable input: one line, no table, no traceback
        assert out.err.startswith("error: ") and out.err.count("\n") == 1 and out.out == "", out
    assert "Traceback" not in out.out + out.err
    return code, out


def test_the_baseline_folder_as_new_or_inside_new_is_an_error(tmp_path, capsys):
    base, cand = tmp_path / "runs" / "released", tmp_path / "runs" / "candidate"
    _write(base, "dinov2", {"top1": 80.0})
    _write(cand, "sinder", {"top1": 70.0})  # a regression that comparing the baseline with itself would hide
    for new in (base, tmp_path / "runs", [cand, base]):
        code, out = _gate(capsys, new, base)
        assert code == 2 and "--new and --baseline share 1 record file(s)" in out.err
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)  # byte-identical records under another folder
    code, out = _gate(capsys, copy, base)
    assert code == 2 and "1 --new record(s) are copies of --baseline records (same record_id" in out.err
    assert _gate(capsys, cand, base)[0] == 1  # the real comparison: 70 against 80


def test_a_new_backbone_without_baseline_fails(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "dinov2", {"top1": 80.0})
    _write(new, "dinov2", {"top1": 80.0})
    _write(new, "sinder", {"top1": 10.0})  # two new backbones: the candidate pairs with nothing
    code, out = _gate(capsys, new, base)
    assert code == 1
    assert "NO BASELINE: sinder [other@sindersinder] / imagenet_knn (smoke) has no baseline to gate it" in out.out
    assert "1 without baseline" in out.out


@pytest.mark.parametrize("side", ["new", "baseline"])
def test_two_records_of_one_run_with_different_values_are_a_conflict(tmp_path, capsys, side):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 19.5})
    _write(new, "m", {"top1": 19.5})
    _write(new if side == "new" else base, "m", {"top1": 19.31})  # a rerun without --resume: same run, seed 0
    _write(new if side == "new" else base, "m", {"top1": 19.61})
    code, out = _gate(capsys, new, base)
    assert code == 2 and f"conflicting records: {side} records of one run (m / imagenet_knn (smoke), seed 0) " \
                         "disagree on top1" in out.err  # fmt: skip
    assert "19.31" in out.err and "19.61" in out.err


@pytest.mark.parametrize("base_value, new_value", [
    (80.0, float("nan")), (float("nan"), 80.0), (80.0, float("inf")), (float("-inf"), 80.0),
    (float("nan"), float("nan")),
])  # fmt: skip
def test_non_finite_values_fail(tmp_path, capsys, base_value, new_value):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": base_value})
    _write(new, "m", {"top1": new_value})
    code, out = _gate(capsys, new, base)
    assert code == 1 and "| NOT FINITE |" in out.out and "1 regression(s) in 1 metric(s)" in out.out


def test_a_baseline_of_failures_gates_nothing(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {}, error="RuntimeError: CUDA out of memory")
    _write(base, "m", {}, task="imagenet_linear", error="RuntimeError: CUDA out of memory")
    _write(new, "m", {"top1": 1.0})
    code, out = _gate(capsys, new, base)
    assert code == 2 and "the baseline gates nothing: all 2 record(s) under --baseline are of failed tasks" in out.err


def test_one_failed_baseline_task_leaves_the_new_task_failing_not_ungated(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0})
    _write(base, "m", {}, task="imagenet_linear", error="RuntimeError: CUDA out of memory")
    _write(new, "m", {"top1": 80.0})
    _write(new, "m", {"top1": 5.0}, task="imagenet_linear")  # nothing to compare it with: not a pass
    code, out = _gate(capsys, new, base)
    assert code == 1 and "NO BASELINE: m [other@mmmmmmmmmmmm] / imagenet_linear (smoke)" in out.out
    assert "note: 1 baseline record(s) of failed tasks ignored" in out.out


def test_a_new_metric_without_baseline_is_said_to_be_ungated(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0})
    _write(new, "m", {"top1": 80.0, "top5": 1.0})
    code, out = _gate(capsys, new, base)
    assert code == 0 and "note: m [other@mmmmmmmmmmmm] / imagenet_knn: new metric(s) top5 have no baseline value: " \
                         "not gated" in out.out  # fmt: skip


def test_new_records_of_other_tasks_leave_the_baseline_missing(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0})
    _write(base, "n", {"top1": 80.0})  # two baseline backbones: no pairing by task alone
    _write(new, "o", {"top1": 80.0}, task="imagenet_linear")
    code, _ = _gate(capsys, new, base)
    assert code == 1  # the baseline's KNN records have no new record: MISSING


def test_a_config_override_is_not_compared_as_equal(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0}, config={"iterations": 3, "checkpoint_every": 1})
    _write(new, "m", {"top1": 85.0}, config={"iterations": 300, "checkpoint_every": 50})  # --cfg-options
    code, out = _gate(capsys, new, base)
    assert code == 2 and "pass --allow-config-change" in out.err and "iterations: 3 -> 300" in out.err
    assert "checkpoint_every" not in out.err  # the interval never changes a result
    code, out = _gate(capsys, new, base, "--allow-config-change")
    assert code == 0 and "CONFIG CHANGE (allowed): m [other@mmmmmmmmmmmm] / imagenet_knn (smoke): iterations: " \
                         "3 -> 300" in out.out  # fmt: skip
    # Only the checkpoint interval differs: the same measurement, no config change.
    other = tmp_path / "other"
    _write(other, "m", {"top1": 80.0}, config={"iterations": 3, "checkpoint_every": 7})
    code, out = _gate(capsys, other, base)
    assert code == 0 and "CONFIG" not in out.out


def test_a_task_version_change_is_a_config_change(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    for root, version in ((base, "1"), (new, "2")):
        path = _write(root, "m", {"top1": 80.0})
        rec = json.loads(path.read_text())
        rec["task_version"] = version
        rec.pop("identity", None)
        path.write_text(json.dumps(rec))
    code, out = _gate(capsys, new, base)
    assert code == 2 and "task version 1 -> 2" in out.err


def test_the_direction_comes_from_the_task_not_the_new_record(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0})
    _write(new, "m", {"top1": 70.0}, directions={"top1": "lower"})  # edited 'higher' to 'lower'
    code, out = _gate(capsys, new, base)
    assert code == 1 and "| higher |" in out.out and "| REGRESSION |" in out.out


def test_a_failure_superseded_by_its_resume_retry_passes(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0})
    _write(new, "m", {}, error="OSError: [Errno 28] No space left on device")
    code, out = _gate(capsys, new, base)
    assert code == 1 and "FAILED TASK" in out.out
    _write(new, "m", {"top1": 80.0})  # sinder-bench run --resume: the same run, now done
    code, out = _gate(capsys, new, base)
    assert code == 0 and "FAILED TASK" not in out.out
    assert "note: 1 new record(s) of failed tasks superseded by a successful retry of the same run" in out.out
    # A failure of another run (another seed) is not superseded.
    _write(new, "m", {}, seed=1, error="OSError: [Errno 28] No space left on device")
    assert _gate(capsys, new, base)[0] == 1


def test_seeds_are_compared_with_seeds(tmp_path, capsys):
    base, new, other = tmp_path / "base", tmp_path / "new", tmp_path / "other"
    _write(base, "m", {"top1": 80.0}, seed=0)
    _write(base, "m", {"top1": 81.0}, seed=1)
    _write(new, "m", {"top1": 80.0}, seed=0)  # bit-identical to the baseline's seed 0
    tol = tmp_path / "tol.yaml"
    tol.write_text("metrics:\n  top1: 0.3\n")  # the old gate: 80.0 against the mean 80.5, -0.5 > 0.3
    code, out = _gate(capsys, new, base, "--tolerance", str(tol))
    assert code == 0 and "| 80.0000 | 80.0000 | +0.0000 | 0.3000 | file | ok | 0 |" in out.out
    assert "compared on seed(s) 0, the ones both sides have (baseline seeds 0,1, new seeds 0)" in out.out
    _write(other, "m", {"top1": 80.0}, seed=5)  # no seed in common: the means, and it says so
    code, out = _gate(capsys, other, base, "--tolerance", str(tol))
    assert code == 1 and "| 80.5000 | 80.0000 |" in out.out and "| 0,1 vs 5 |" in out.out
    assert "no seed in common: the mean over baseline seeds 0,1 against the mean over new seeds 5" in out.out


@pytest.mark.parametrize("verb", ["compare", "report"])
def test_a_record_that_is_not_utf8_is_one_line(tmp_path, capsys, verb):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0})
    path = _write(new, "m", {"top1": 80.0})
    path.write_bytes(path.read_bytes().replace(b'"m"', b'"\xff\xfe"', 1))
    if verb == "compare":
        code, out = _gate(capsys, new, base)
    else:
        code = main(["report", "--runs", str(new), "--tables", "3", "--no-plots", "--out", str(tmp_path / "t")])
        out = capsys.readouterr()
        assert not (tmp_path / "t").exists()
    assert code == 2 and out.err.startswith(f"error: {path}: not a run record: not UTF-8 text")
    assert "Traceback" not in out.err and out.err.count("\n") == 1


# ------------------------------------------------------------------------------------------- tolerance files
@pytest.mark.parametrize("text, needle", [
    ("metrics:\n  top1: 0.3\n  top1: 50\n", "key 'top1' is given twice (line 3)"),
    ("default: 0.1\ndefault: 0.2\n", "key 'default' is given twice"),
    ("default: .inf\n", "bad tolerance inf"),
    ("metrics:\n  top1: {abs: .nan}\n", "bad tolerance {'abs': nan}"),
    ("metrics:\n  top1: -.Inf\n", "bad tolerance -inf"),
    ("default: 1e400\n", "bad tolerance inf"),  # a YAML 1.2 float that overflows
    ("default: " + "9" * 400 + "\n", "bad tolerance"),  # an int too large for a float
    ("default: 1_000\n", "bad tolerance '1_000'"),  # YAML 1.1 only: text in 1.2
    ("default: yes\n", "bad tolerance 'yes'"),
    ("default: true\n", "bad tolerance True"),
    ("metrics: [top1]\n", "'metrics' must be a mapping"),
    ("metrics:\n  1: 0.1\n  '1': 0.2\n", "'metrics' names a metric twice"),
])  # fmt: skip
def test_bad_tolerance_files(tmp_path, text, needle):
    tol = tmp_path / "tol.yaml"
    tol.write_text(text)
    with pytest.raises(CompareError) as err:
        load_tolerances(tol)
    assert needle in str(err.value)


@pytest.mark.parametrize("text, needle", [
    ('{"metrics": {"top1": 0.3, "top1": 50}}', "key 'top1' is given twice"),
    ('{"default": Infinity}', "bad tolerance inf"),
    ('{"default": NaN}', "bad tolerance nan"),
])  # fmt: skip
def test_bad_json_tolerance_files(tmp_path, text, needle):
    tol = tmp_path / "tol.json"
    tol.write_text(text)
    with pytest.raises(CompareError, match="tol.json") as err:
        load_tolerances(tol)
    assert needle in str(err.value)


# Floats of the YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution:
# [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?), each read as Python's float() reads it;
# the ints 0o and 0x as Python's int(text, 0).
@pytest.mark.parametrize("literal", ["1e9", "1E9", "1e-3", "2e+2", ".5", "+.5", "5.", "0.25", "+1.5e3", "7",
                                     "010", "0o17", "0x1f", "0"])  # fmt: skip
def test_every_yaml12_number_is_a_number(tmp_path, literal):
    tol = tmp_path / "tol.yaml"
    tol.write_text(f"default: {literal}\nmetrics:\n  top1: {{rel: {literal}}}\n")
    expected = int(literal, 0) if literal.startswith(("0o", "0x")) else float(literal)
    data = load_tolerances(tol)
    assert data["default"] == expected and data["metrics"]["top1"] == {"rel": expected}


def test_default_1e9_is_accepted_by_the_gate(tmp_path, capsys):
    base, new = tmp_path / "base", tmp_path / "new"
    _write(base, "m", {"top1": 80.0})
    _write(new, "m", {"top1": 10.0})
    tol = tmp_path / "tol.yaml"
    tol.write_text("default: 1e9\n")
    code, out = _gate(capsys, new, base, "--tolerance", str(tol))
    assert code == 0 and "| 1000000000.0000 | file default | ok |" in out.out
    tol.write_text("default: 1e-3\n")
    code, out = _gate(capsys, new, base, "--tolerance", str(tol))
    assert code == 1 and "| 0.0010 | file default | REGRESSION |" in out.out
