"""`sinder-bench run` end to end on the smoke profile, resume, crash recovery, preflight, registry."""

import json
import shutil

import pytest

from benchmarks.classification.task import ImageNetKNN, ImageNetLinear
from benchmarks.cli import main
from benchmarks.core import registry
from benchmarks.core.results import load_records

BACKBONE = "dinov2_tiny_random"



@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")  # synthetic data and features shared by the tests


def _run(out, cache, *extra):
    return main(["run", "--suite", "table3", "--profile", "smoke", "--backbone", BACKBONE, "--out", str(out),
                 "--cache-dir", str(cache), "--no-progress", *extra])  # fmt: skip


def _keys(out):
    return sorted((r["task"], r["backbone"]["weights_sha256"], r["profile"]) for r in load_records(out))


class _Counter:
    def __init__(self, monkeypatch):
        self.calls = []
        for cls in (ImageNetKNN, ImageNetLinear):
            original = cls.run

            def wrapped(task, backbone, ctx, original=original):
                self.calls.append(task.name)
                return original(task, backbone, ctx)

            monkeypatch.setattr(cls, "run", wrapped)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("baseline-runs")
    assert _run(out, cache) == 0
    return out


def test_smoke_table3_end_to_end(baseline):
    records = load_records(baseline)
    assert sorted(r["task"] for r in records) == ["imagenet_knn", "imagenet_linear"]
    for rec in records:
        assert rec["profile"] == "smoke" and rec["backbone"]["label"] == BACKBONE
        assert len(rec["backbone"]["weights_sha256"]) == 64
        assert 0.0 <= rec["metrics"]["top1"] <= rec["metrics"]["top5"] <= 100.0
        assert rec["metric_directions"]["top1"] == "higher"
        assert rec["config"]["crop"] == 56 and rec["wall_time_s"] > 0
    knn = next(r for r in records if r["task"] == "imagenet_knn")
    assert knn["hparams"]["k"] in knn["config"]["ks"] and knn["hparams"]["T"] == 0.07
    linear = next(r for r in records if r["task"] == "imagenet_linear")
    assert linear["hparams"]["n_heads"] == 52 and len(linear["details"]["heads"]) == 52
    summary = json.loads(next((baseline / "summaries").glob("*.json")).read_text())
    assert len(summary["ran"]) == 2 and not summary["failed"]


def test_the_run_log_file_holds_every_line_the_console_showed(tmp_path, cache, capsys):
    # logging, not print: the console lines and the run's own log file (<out>/logs/<run id>.log) are one stream
    out = tmp_path / "runs"
    assert _run(out, cache) == 0
    console = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    logs = list((out / "logs").glob("*.log"))
    assert len(logs) == 1 and logs[0].stem == json.loads(next((out / "summaries").glob("*.json")).read_text())["run_id"]
    logged = [line.split(": ", 1)[1] for line in logs[0].read_text().splitlines() if ": " in line]
    shown = [line for line in console if any(task in line for task in ("imagenet_knn", "imagenet_linear"))]
    assert shown and all(line in logged for line in shown), (shown, logged)


def test_resume_does_no_work(baseline, cache, monkeypatch):
    before = sorted(p.name for p in baseline.rglob("*.json"))
    counter = _Counter(monkeypatch)
    assert _run(baseline, cache, "--resume") == 0
    assert counter.calls == []
    after = sorted(p.name for p in baseline.rglob("*.json") if p.parent.name != "summaries")
    assert after == [n for n in before if n in after] and len(after) == 2


def test_crash_mid_run_then_resume_gives_the_same_records(baseline, cache, tmp_path, monkeypatch):
    out = tmp_path / "runs"

    def crash(task, backbone, ctx):
        raise KeyboardInterrupt  # not an Exception: kills the run like a signal would

    monkeypatch.setattr(ImageNetLinear, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(out, cache)
    assert [k[0] for k in _keys(out)] == ["imagenet_knn"]  # the finished task survived the crash
    monkeypatch.undo()
    counter = _Counter(monkeypatch)
    assert _run(out, cache, "--resume") == 0
    assert counter.calls == ["imagenet_linear"]
    assert _keys(out) == _keys(baseline)


def test_a_failing_task_is_reported_and_the_suite_goes_on(cache, tmp_path, monkeypatch, capsys):
    def broken(task, backbone, ctx):
        raise ValueError("synthetic failure")

    monkeypatch.setattr(ImageNetKNN, "run", broken)
    assert _run(tmp_path, cache, "--cfg-options", "imagenet_linear.iterations=2") == 1
    records = {r["task"]: r for r in load_records(tmp_path)}
    assert records["imagenet_knn"]["error"] == "ValueError: synthetic failure"  # the failure is on record
    assert records["imagenet_knn"]["metrics"] == {} and "error" not in records["imagenet_linear"]
    out = capsys.readouterr().out
    assert "1 failed" in out and "synthetic failure" in out


def test_paper_profile_preflight_lists_every_missing_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("SINDER_BENCH_DATA", raising=False)
    out = tmp_path / "runs"
    code = main(["run", "--suite", "table3", "--backbone", "dinov2_vitg14", "--backbone",
                 f"x=dinov2_tiny:{tmp_path / 'nope.safetensors'}", "--data-root", str(tmp_path / "data"),
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "3 missing or invalid input(s)" in err
    assert "dinov2_vitg14_pretrain.pth" in err and "nope.safetensors" in err
    assert str(tmp_path / "data" / "imagenet") in err
    assert not out.exists()  # nothing ran
    code = main(["run", "--suite", "table3", "--backbone", BACKBONE, "--out", str(out)])
    assert code == 2 and "--data-root" in capsys.readouterr().err


def test_unregistered_tasks_are_not_available(tmp_path, monkeypatch, capsys):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "future.yaml").write_text("tasks: [seg_future_task]\n")
    monkeypatch.setattr(registry, "SUITES_DIR", suites)
    code = main(["run", "--suite", "future", "--profile", "smoke", "--backbone", BACKBONE, "--out",
                 str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert code == 1  # a requested table that did not run must not pass a CI job
    assert "not available: seg_future_task" in capsys.readouterr().out
    summary = json.loads(next((tmp_path / "runs" / "summaries").glob("*.json")).read_text())
    assert "seg_future_task" in summary["not_available"]


def test_registry_and_suites():
    assert {"imagenet_knn", "imagenet_linear"} <= set(registry.list_tasks())
    assert registry.list_suites() == ["all", "remedies", "table1", "table2", "table3", "table4", "table5", "table6",
                                      "table7"]
    everything = registry.get_suite("all").tasks
    union = [t for n in range(1, 8) for t in registry.get_suite(f"table{n}").tasks]
    assert list(everything) == union and len(set(everything)) == len(everything)
    assert registry.get_suite("table3").tasks == ("imagenet_knn", "imagenet_linear")
    assert registry.get_suite("imagenet_knn").tasks == ("imagenet_knn",)  # a task name is a one-task suite
    task = registry.get_task("imagenet_linear")
    assert task.table == "table3" and task.metric("top1").higher_is_better
    assert task.datasets_needed("paper") == ["imagenet:train", "imagenet:val"]
    assert task.config("paper")["iterations"] == 12500 and len(task.config("paper")["lrs"]) == 13
    with pytest.raises(KeyError, match="imagenet_knn"):
        registry.get_task("nope")
    with pytest.raises(KeyError, match="table3"):
        registry.get_suite("nope")


def test_registering_a_task_needs_no_runner_change(monkeypatch):
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))

    @registry.register_task
    class Toy(registry.Task):
        name = "toy_task"
        metrics = (registry.Metric("rmse", higher_is_better=False),)

    assert "toy_task" in registry.list_tasks()
    assert not registry.get_task("toy_task").metric("rmse").higher_is_better

    class Other(registry.Task):
        name = "toy_task"

    with pytest.raises(ValueError, match="registered twice"):
        registry.register_task(Other)


def test_backbone_spec_parsing():
    from benchmarks.core.backbones import parse_backbone_spec

    spec = parse_backbone_spec("sinder=dinov2_vitg14:ckpt/sinder.safetensors")
    assert (spec.label, spec.name, spec.weights) == ("sinder", "dinov2_vitg14", "ckpt/sinder.safetensors")
    assert parse_backbone_spec("dinov2_vitg14:w/repaired.pth").label == "repaired"
    assert parse_backbone_spec("dinov2_vits14").label == "dinov2_vits14"
    with pytest.raises(ValueError, match="label"):
        parse_backbone_spec("bad label=dinov2_vits14")


def test_resume_after_a_seed_change_is_new_work(baseline, cache, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    shutil.copytree(baseline, out)
    counter = _Counter(monkeypatch)
    assert _run(out, cache, "--resume", "--seed", "1") == 0
    assert sorted(counter.calls) == ["imagenet_knn", "imagenet_linear"]  # seed 1 gives other numbers: new work
    assert sorted(r["seed"] for r in load_records(out)) == [0, 0, 1, 1]
    counter.calls.clear()
    assert _run(out, cache, "--resume", "--seed", "1") == 0 and counter.calls == []


def test_resume_under_a_new_label_reuses_the_record(baseline, cache, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    shutil.copytree(baseline, out)
    counter = _Counter(monkeypatch)
    code = main(["run", "--suite", "table3", "--profile", "smoke", "--backbone", f"renamed={BACKBONE}", "--out",
                 str(out), "--cache-dir", str(cache), "--no-progress", "--resume"])  # fmt: skip
    assert code == 0 and counter.calls == []  # same weights: no work
    records = load_records(out)
    renamed = {r["task"]: r for r in records if r["backbone"]["label"] == "renamed"}
    original = {r["task"]: r for r in records if r["backbone"]["label"] == BACKBONE}
    assert sorted(renamed) == sorted(original) == ["imagenet_knn", "imagenet_linear"]
    for task, rec in renamed.items():
        assert rec["metrics"] == original[task]["metrics"] and rec["reused_from"] == original[task]["record_id"]
        assert rec["identity"] == original[task]["identity"]


def test_a_run_claimed_by_a_live_process_is_not_repeated(baseline, cache, tmp_path, monkeypatch):
    from benchmarks.core.claims import Claim

    out = tmp_path / "runs"
    knn = next(r for r in load_records(baseline) if r["task"] == "imagenet_knn")
    held = Claim(out / ".claims" / f"{knn['identity']['key']}.lock")
    assert held.acquire()  # as a concurrent run into the same folder would
    counter = _Counter(monkeypatch)
    try:
        assert _run(out, cache) == 0
    finally:
        held.release()
    assert counter.calls == ["imagenet_linear"]
    summary = json.loads(next((out / "summaries").glob("*.json")).read_text())
    assert summary["skipped"][0]["task"] == "imagenet_knn" and "being run by pid" in summary["skipped"][0]["why"]


def test_work_a_concurrent_run_finished_meanwhile_is_not_repeated(baseline, cache, tmp_path, monkeypatch):
    from benchmarks.core.results import ResultStore

    out = tmp_path / "runs"
    for rec in load_records(baseline):  # as if another run into this folder finished them after this one began
        rec = {k: v for k, v in rec.items() if k != "_path"}
        ResultStore(out).write({**rec, "created": "2999-01-01T00:00:00.000000Z"})
    counter = _Counter(monkeypatch)
    assert _run(out, cache) == 0  # no --resume: earlier records would be repeated, concurrent ones are not
    assert counter.calls == [] and len(load_records(out)) == 2
    summary = json.loads(next((out / "summaries").glob("*.json")).read_text())
    assert [s["why"] for s in summary["skipped"]] == ["already recorded by a concurrent run"] * 2


def test_resume_after_a_task_version_or_config_change_is_new_work(baseline, cache, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    shutil.copytree(baseline, out)
    monkeypatch.setattr(ImageNetKNN, "version", "2")  # a change that makes earlier KNN numbers incomparable
    counter = _Counter(monkeypatch)
    # an override is part of the resolved config, hence of the run identity: new work, not a resumed record
    assert _run(out, cache, "--resume", "--cfg-options", "imagenet_linear.iterations=3") == 0
    assert sorted(counter.calls) == ["imagenet_knn", "imagenet_linear"]
    assert sorted(r["task_version"] for r in load_records(out) if r["task"] == "imagenet_knn") == ["1", "2"]
    assert sorted(r["config"]["iterations"] for r in load_records(out) if r["task"] == "imagenet_linear") == [3, 24]
