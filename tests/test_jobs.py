"""`sinder-bench run --jobs N`: pairs run in worker processes give the records of a sequential run, a failing or
dying task fails alone, torchrun refuses N > 1, and `auto` resolves as documented."""

import json
import multiprocessing
import os
import re
import shutil

import pytest

from benchmarks.cli import main
from benchmarks.core import distributed as D
from benchmarks.core import registry, workers
from benchmarks.core.progress import SuiteProgress
from benchmarks.core.results import load_records
from benchmarks.core.runner import run_suite

EMBED_DIM = 96  # of dinov2_tiny_random
BACKBONES = ["--backbone", "dinov2_tiny_random", "--backbone", "dinov2_tiny_defective"]


# Toy tasks at module level: a worker process unpickles them by reference (importing this module).
class _Fine(registry.Task):
    name = "toy_jobs_fine"
    metrics = (registry.Metric("score"),)

    def run(self, backbone, ctx):
        return {"metrics": {"score": float(backbone.embed_dim)}, "hparams": {"pid": os.getpid()}}


class _Boom(registry.Task):
    name = "toy_jobs_boom"

    def run(self, backbone, ctx):
        raise RuntimeError("boom in the toy task")


class _Dies(registry.Task):
    name = "toy_jobs_dies"

    def run(self, backbone, ctx):
        if multiprocessing.parent_process() is None:  # never end the test process itself
            raise RuntimeError("toy_jobs_dies runs in worker processes only")
        os._exit(3)  # as a kill or the OOM killer ends a worker mid-task


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jobs-cache")


def _run(out, cache, jobs, suite="table3", backbones=BACKBONES, *extra):
    return main(["run", "--suite", suite, "--profile", "smoke", *backbones, "--out", str(out),
                 "--cache-dir", str(cache), "--no-progress", "--jobs", str(jobs), *extra])  # fmt: skip


def _by_pair(out):
    return {(r["backbone"]["label"], r["task"]): r for r in load_records(out)}


@pytest.mark.slow
def test_two_jobs_write_the_records_of_one(cache, tmp_path, capsys):
    short = ["--cfg-options", "imagenet_linear.iterations=8"]  # a shorter probe; the workers get it too
    assert _run(tmp_path / "one", cache, 1, "table3", BACKBONES, *short) == 0
    shutil.rmtree(cache / "work", ignore_errors=True)  # the second run trains from scratch, not from checkpoints
    capsys.readouterr()
    assert _run(tmp_path / "two", cache, 2, "table3", BACKBONES, *short) == 0
    printed = capsys.readouterr().out
    one, two = _by_pair(tmp_path / "one"), _by_pair(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(two) == 4
    assert all(r["config"]["iterations"] == 8 for (_, task), r in two.items() if task == "imagenet_linear")
    for pair, record in one.items():
        for key in ("metrics", "identity", "config", "hparams", "metric_directions", "backbone"):
            assert two[pair][key] == record[key], (pair, key)
    # One line per finished pair, counted 1..4 in the order they finished, then the closing lines.
    finished = re.findall(r"^\[(\d)/4 \| [^]]*\] (\S+) (imagenet_\w+): top1=", printed, flags=re.M)
    assert [k for k, _, _ in finished] == ["1", "2", "3", "4"]
    assert sorted((label, task) for _, label, task in finished) == sorted(one)
    # Each pair also says when it starts, counted 1..4, before its result line.
    started = re.findall(r"^\[(\d)/4 started \| [^]]*\] (\S+) (imagenet_\w+) \.\.\.$", printed, flags=re.M)
    assert [k for k, _, _ in started] == ["1", "2", "3", "4"]
    assert sorted((label, task) for _, label, task in started) == sorted(one)
    for _, label, task in started:
        assert printed.index("started | ") < printed.index(f"] {label} {task}: top1=")
    assert "next:    sinder-bench report --runs" in printed
    summary = json.loads(next((tmp_path / "two" / "summaries").glob("*.json")).read_text())
    assert [(e["backbone"], e["task"]) for e in summary["ran"]] == [
        ("dinov2_tiny_random", "imagenet_knn"), ("dinov2_tiny_random", "imagenet_linear"),
        ("dinov2_tiny_defective", "imagenet_knn"), ("dinov2_tiny_defective", "imagenet_linear"),
    ]  # fmt: skip


@pytest.mark.slow
def test_a_failing_or_dying_task_fails_alone(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    for cls in (_Boom, _Dies, _Fine):
        registry.register_task(cls)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "toys.yaml").write_text("tasks: [toy_jobs_boom, toy_jobs_dies, toy_jobs_fine]\n")
    monkeypatch.setattr(registry, "SUITES_DIR", suites)
    out = tmp_path / "runs"
    assert _run(out, cache, 2, suite="toys", backbones=["--backbone", "dinov2_tiny_random"]) == 1
    printed = capsys.readouterr().out
    summary = json.loads(next((out / "summaries").glob("*.json")).read_text())
    assert [e["task"] for e in summary["ran"]] == ["toy_jobs_fine"]
    errors = {e["task"]: e["error"] for e in summary["failed"]}
    assert errors["toy_jobs_boom"] == "RuntimeError: boom in the toy task"
    assert errors["toy_jobs_dies"].startswith("WorkerDied: the worker process running it ended (exit code 3)")
    records = _by_pair(out)
    fine = records[("dinov2_tiny_random", "toy_jobs_fine")]
    assert fine["metrics"] == {"score": float(EMBED_DIM)}
    assert fine["hparams"]["pid"] != os.getpid()  # it ran in a worker
    assert records[("dinov2_tiny_random", "toy_jobs_boom")]["error"] == "RuntimeError: boom in the toy task"
    assert ("dinov2_tiny_random", "toy_jobs_dies") not in records  # no half-written record of the dead worker
    assert "failed: [dinov2_tiny_random] toy_jobs_dies: WorkerDied" in printed
    assert re.search(r"^\[\d/3 \| [^]]*\] dinov2_tiny_random toy_jobs_boom: FAILED \(RuntimeError", printed, re.M)


def test_torchrun_refuses_more_than_one_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = _run(tmp_path / "runs", tmp_path / "cache", 2, backbones=["--backbone", "dinov2_tiny_random"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--jobs 2: this run is distributed (torchrun, WORLD_SIZE=2)" in err and "--jobs 1" in err
    assert not (tmp_path / "runs").exists()
    assert workers.resolve_jobs("auto", "smoke", 1, cores=8) == 1  # auto under torchrun: one at a time
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(D, "is_distributed", lambda: True)  # the library refuses too, once the group is up
    with pytest.raises(ValueError, match="this run is distributed"):
        run_suite("table3", ["dinov2_tiny_random"], profile="smoke", out=tmp_path / "runs",
                  cache_dir=tmp_path / "cache", jobs=2)  # fmt: skip


def test_jobs_auto_and_the_value_the_cli_passes(tmp_path, monkeypatch, capsys):
    assert workers.resolve_jobs("auto", "smoke", 1, cores=2) == 2
    assert workers.resolve_jobs("auto", "smoke", 1, cores=16) == 2  # capped: tiny models gain nothing more
    assert workers.resolve_jobs("auto", "smoke", 1, cores=1) == 1
    assert workers.resolve_jobs("auto", "smoke", 4, cores=6) == 1  # cores // threads
    assert workers.resolve_jobs("auto", "paper", None, cores=64) == 1  # one ViT-g training at a time
    assert workers.resolve_jobs(3, "paper", None, cores=1) == 3  # a number stands as given
    with pytest.raises(ValueError, match="--jobs '0': give a number of processes >= 1, or auto"):
        workers.parse_jobs("0")
    assert workers.parse_jobs("AUTO") == "auto" and workers.parse_jobs("4") == 4

    seen = []

    def fake_run_suite(suite, backbones, **kwargs):
        from benchmarks.core.runner import RunSummary

        seen.append((kwargs["profile"], kwargs["jobs"]))
        return RunSummary(run_id="x", suite=suite, profile=kwargs["profile"])

    monkeypatch.setattr("benchmarks.core.runner.run_suite", fake_run_suite)
    monkeypatch.setattr(workers, "available_cores", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(workers.JOBS_ENV)  # conftest keeps the other tests' runs in their own process
    base = ["run", "--suite", "table3", "--out", str(tmp_path / "runs"), "--backbone", "dinov2_tiny_random"]
    assert main([*base, "--profile", "smoke"]) == 0
    assert main([*base, "--profile", "paper"]) == 0
    assert main([*base, "--profile", "smoke", "--jobs", "1"]) == 0
    monkeypatch.setenv(workers.JOBS_ENV, "3")
    assert main([*base, "--profile", "paper"]) == 0  # the variable stands for the flag
    assert main([*base, "--profile", "paper", "--jobs", "auto"]) == 0  # and the flag beats it
    assert seen == [("smoke", 2), ("paper", 1), ("smoke", 1), ("paper", 3), ("paper", 1)]
    monkeypatch.setenv(workers.JOBS_ENV, "many")
    assert main([*base, "--profile", "smoke"]) == 2
    assert "error: $SINDER_BENCH_JOBS 'many': give a number of processes >= 1, or auto" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--jobs", "none"])
    assert exit_info.value.code == 2 and "--jobs 'none': give a number of processes >= 1" in capsys.readouterr().err


def test_longest_first_and_the_shared_estimate():
    class T:
        def __init__(self, name):
            self.name = name

    pairs = [(i, None, T(n)) for i, n in enumerate(["imagenet_knn", "brand_new", "depth_nyu_dpt", "imagenet_knn"])]
    order = [p[2].name for p in workers.order_pairs(pairs, {}, "smoke")]
    assert order == ["brand_new", "depth_nyu_dpt", "imagenet_knn", "imagenet_knn"]  # never timed: first
    timed = workers.order_pairs(pairs, {"imagenet_knn": 99.0, "brand_new": 1.0}, "smoke")
    assert [p[0] for p in timed] == [0, 3, 2, 1]  # earlier records' times beat the static table; ties keep order
    assert [p[0] for p in workers.order_pairs(pairs, {}, "paper")] == [0, 1, 2, 3]  # nothing known: plan order
    progress = SuiteProgress(["a", "b", "c"], expected={"a": 30.0, "b": 10.0, "c": 20.0}, parallel=2)
    assert progress.remaining_estimate() == 30.0  # 60 s of work on two workers, and no less than the longest
    progress.done("b", 10.0)
    assert progress.remaining_estimate() == 30.0 and progress.prefix(1).startswith("[1/3 | ")


def test_the_estimate_comes_from_measured_smoke_times_scaled_by_cores():
    table = workers.SMOKE_SECONDS
    # measured on SMOKE_SECONDS_CORES cores, one process of one thread: as measured where the cores suffice
    same = workers.smoke_expected({}, "smoke", jobs=2, threads=1, cores=2)
    assert same["stego_cityscapes"] == table["stego_cityscapes"]
    # two processes on one core take turns: each task takes twice its time; more cores do not speed a thread up
    assert workers.smoke_expected({}, "smoke", jobs=2, threads=1, cores=1)["cause_voc"] == 2 * table["cause_voc"]
    assert workers.smoke_expected({}, "smoke", jobs=1, threads=1, cores=16)["cause_voc"] == table["cause_voc"]
    # the output folder's own records win; another profile has no table
    assert workers.smoke_expected({"cause_voc": 99.0}, "smoke", 2, 1, 2)["cause_voc"] == 99.0
    assert workers.smoke_expected({"cause_voc": 99.0}, "paper", 2, 1, 2) == {"cause_voc": 99.0}
    # The main job's first estimate (nothing recorded, 2 workers on 2 cores): its tasks' table times over 2,
    # not a mean of the first (longest) pairs to finish spread over all of them.
    names = [n for n in table if not n.startswith("ablation_")] * 2 + ["ablation_constraints", "ablation_thresholds"]
    progress = SuiteProgress(names, workers.smoke_expected({}, "smoke", 2, 1, 2), parallel=2)
    assert progress.remaining_estimate() == pytest.approx(sum(table[n] for n in names) / 2)


def test_a_running_pair_counts_only_what_it_has_left():
    now = [0.0]
    progress = SuiteProgress(["a", "b", "a"], expected={"a": 30.0, "b": 10.0}, clock=lambda: now[0])
    assert progress.remaining_estimate() == 70.0
    progress.started("a")
    now[0] = 20.0
    assert progress.remaining_estimate() == 50.0  # 10 s left of the running a, then b and the other a
    now[0] = 45.0
    assert progress.remaining_estimate() == 41.0  # over its time: at least a second left, until it finishes
    progress.done("a", 45.0)
    assert progress.remaining_estimate() == 40.0 and progress.running == []
    assert progress.prefix(2, "started").startswith("[2/3 started | 45 s elapsed, about 40 s left]")
