"""The submitit fan-out (benchmarks/core/launch.py): local jobs write the records of an in-process run, status
reads done / running / failed / pending, and a requeued job resumes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks.core import launch as L
from benchmarks.core.results import load_records
from benchmarks.core.runner import run_suite

pytest.importorskip("submitit")

BACKBONES = ["dinov2_tiny_defective", "rand=dinov2_tiny_swiglu_random"]
RUN = {"device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def fanned(tmp_path_factory):
    """The same smoke KNN on two backbones in-process and as local submitit jobs (plus one job that fails)."""
    root = tmp_path_factory.mktemp("launch")
    cache = root / "cache"
    inproc = run_suite("imagenet_knn", BACKBONES, profile="smoke", out=root / "inproc", cache_dir=cache, **RUN)
    assert not inproc.failed
    bad = f"bad=dinov2_tiny_defective:{root / 'missing.safetensors'}"
    jobs = L.launch("imagenet_knn", BACKBONES + [bad], launcher="local", profile="smoke", out=root / "fan",
                    cache_dir=cache, gpus=0, run_args=L.RunArgs(device="cpu", no_progress=True),
                    say=lambda _: None)  # fmt: skip
    failed = L.wait_all(jobs, poll_s=0.2)
    return root, cache, failed


def _by_label(folder):
    return {r["backbone"]["label"]: r for r in load_records(folder)}


@pytest.mark.slow
def test_local_jobs_write_the_records_of_an_in_process_run(fanned):
    root, _, failed = fanned
    assert failed == 1  # the job whose weights file is missing
    ours, ref = _by_label(root / "fan"), _by_label(root / "inproc")
    assert set(ours) == set(ref) == {"dinov2_tiny_defective", "rand"}
    for label, record in ref.items():
        got = ours[label]
        assert got["task"] == "imagenet_knn" and got["profile"] == "smoke"
        assert got["backbone"]["weights_sha256"] == record["backbone"]["weights_sha256"]
        assert got["metrics"] == pytest.approx(record["metrics"], abs=1e-9)
        assert got["hparams"] == record["hparams"]
    manifest = L.read_manifest(root / "fan")
    assert sorted(e["label"] for e in manifest) == ["bad", "dinov2_tiny_defective", "rand"]
    assert not list((root / "fan" / "launch").rglob("*.json"))  # the records folder stays readable as records


@pytest.mark.slow
def test_status_reports_done_and_the_failure_with_its_error(fanned, capsys):
    root, _, _ = fanned
    rows = {r["backbone"]: r for r in L.status_rows(root / "fan")}
    assert rows["dinov2_tiny_defective"]["state"] == rows["rand"]["state"] == "done"
    assert rows["bad"]["state"] == "failed"
    assert "missing.safetensors" in rows["bad"]["detail"] and "does not exist" in rows["bad"]["detail"]
    from benchmarks.cli import main

    capsys.readouterr()
    assert main(["status", "--out", str(root / "fan"), "--json"]) == 0
    assert {r["backbone"]: r["state"] for r in json.loads(capsys.readouterr().out)} == {
        "bad": "failed", "dinov2_tiny_defective": "done", "rand": "done"}  # fmt: skip


@pytest.mark.slow
def test_requeued_job_resumes_instead_of_rerunning(fanned):
    root, cache, _ = fanned
    job = L.JobSpec(BACKBONES[0], "dinov2_tiny_defective", "imagenet_knn", "smoke", 0, 5)
    kwargs = {**RUN, "out": str(root / "fan"), "cache_dir": str(cache), "resume": False}
    place = {"out": kwargs.pop("out"), "cache_dir": kwargs.pop("cache_dir")}
    run_args = {**L.RunArgs(device="cpu", no_progress=True).to_json(), "resume": False}
    requeued = L.BenchJob().checkpoint(job.__dict__, run_args, place)  # what submitit calls on preemption or time-out
    assert requeued.kwargs == {} and requeued.args[1]["resume"] is True
    before = len(load_records(root / "fan"))
    summary = requeued.function(*requeued.args)
    assert [s["task"] for s in summary["skipped"]] == ["imagenet_knn"] and not summary["ran"]
    assert len(load_records(root / "fan")) == before


@pytest.mark.slow
def test_a_pair_held_by_another_process_is_waited_for_never_done_without_a_record(fanned, monkeypatch):
    """A scancelled job still alive (submitit ignores SIGTERM) holds the pair's claim when its --resume rerun
    starts: the rerun waits for it, then runs; a claim held past HELD_WAIT_S fails the job (before: it returned
    success with no record, and status said done)."""
    import threading

    from benchmarks.core.job import pair_claim

    root, cache, _ = fanned
    (ref,) = [r for r in load_records(root / "inproc") if r["backbone"]["label"] == BACKBONES[0]]
    out = root / "held"
    job = L.JobSpec(BACKBONES[0], BACKBONES[0], "imagenet_knn", "smoke", 0, 5).__dict__
    run_args = L.RunArgs(device="cpu", no_progress=True).to_json()
    place = {"out": str(out), "cache_dir": str(cache)}
    other = pair_claim(out, ref["identity"]["key"])
    assert other.acquire()  # this process plays the cancelled job that is still alive
    monkeypatch.setattr(L, "HELD_WAIT_S", 0.5)
    monkeypatch.setattr(L, "HELD_POLL_S", 0.1)
    with pytest.raises(RuntimeError, match=r"imagenet_knn: not run, being run by pid \d+ .*rerun with --resume"):
        L.BenchJob()(job, run_args, place)
    assert load_records(out, missing_ok=True) == []

    monkeypatch.setattr(L, "HELD_WAIT_S", 60.0)
    threading.Timer(1.0, other.release).start()  # the other process ends without a record
    summary = L.BenchJob()(job, run_args, place)
    assert [r["task"] for r in summary["ran"]] == ["imagenet_knn"]
    (got,) = load_records(out)
    assert got["identity"] == ref["identity"] and got["metrics"] == pytest.approx(ref["metrics"], abs=1e-9)


def test_status_from_job_files(tmp_path, monkeypatch):
    import submitit
    from submitit.core.utils import cloudpickle_dump

    folder = tmp_path / "launch" / "submitit"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    entries = [
        {"label": "a", "task": "t", "profile": "paper", "job_id": "101", "launcher": "slurm"},  # queued
        {"label": "b", "task": "t", "profile": "paper", "job_id": "102", "launcher": "slurm"},  # running
        {"label": "c", "task": "t", "profile": "paper", "job_id": "103", "launcher": "slurm"},  # error result
        {"label": "d", "task": "t", "profile": "paper", "job_id": str(dead.pid), "launcher": "local"},  # killed
    ]
    for e in entries:
        e["folder"] = str(folder)
    paths = {e["label"]: submitit.core.utils.JobPaths(folder, job_id=e["job_id"], task_id=0) for e in entries}
    paths["b"].stdout.write_text("started\n")
    paths["d"].stdout.write_text("started\n")
    cloudpickle_dump(("error", "Traceback (most recent call last):\n  ...\nRuntimeError: [b] t: CUDA out of memory"),
                     paths["c"].result_pickle)  # fmt: skip
    (tmp_path / "launch" / L.MANIFEST).write_text("".join(json.dumps(e) + "\n" for e in entries))
    monkeypatch.setattr(L, "_slurm_query", lambda cmd: {"101": "PD", "102": "R"}[cmd[3]] if cmd[0] == "squeue" else "")
    rows = {r["backbone"]: r for r in L.status_rows(tmp_path)}
    assert {k: r["state"] for k, r in rows.items()} == {"a": "pending", "b": "running", "c": "failed", "d": "failed"}
    assert rows["c"]["detail"].endswith("RuntimeError: [b] t: CUDA out of memory")
    assert "without a result" in rows["d"]["detail"]
    text = L.format_status(list(rows.values()))
    assert text.splitlines()[-1] == "0 done, 1 running, 2 failed, 1 pending"


def test_plan_takes_resources_from_flags_else_defaults(tmp_path):
    jobs, missing = L.plan_jobs("imagenet_knn,imagenet_knn", ["x=dinov2_tiny"], profile="smoke", cache_dir=tmp_path)
    assert [(j.label, j.task, j.gpus, j.timeout_min) for j in jobs] == [("x", "imagenet_knn", 0, 30)]
    assert missing == {}
    with pytest.raises(L.LaunchError, match="unknown suite 'no_such_task_xyz'"):
        L.plan_jobs("imagenet_knn,no_such_task_xyz", ["x=dinov2_tiny"], profile="smoke", cache_dir=tmp_path)
    jobs, _ = L.plan_jobs("imagenet_knn", ["x=dinov2_tiny"], profile="paper", cache_dir=tmp_path, gpus=4,
                          timeout_min=90)  # fmt: skip
    assert (jobs[0].gpus, jobs[0].timeout_min) == (4, 90)
    with pytest.raises(L.LaunchError, match="no backbone"):
        L.plan_jobs("imagenet_knn", None, profile="paper", cache_dir=tmp_path)
    with pytest.raises(L.LaunchError, match="--slurm-param 'account'"):
        L._parse_slurm_params(["account"])


def test_cfg_options_are_checked_before_any_job_is_submitted():
    L._check_cfg_options({"imagenet_knn.ks": [5]}, "table3", "smoke")  # a task of the suite, a key it holds
    with pytest.raises(L.LaunchError, match="suite table3 has no task 'depth_nyu_dpt'"):
        L._check_cfg_options({"depth_nyu_dpt.lr": 1.0}, "table3", "smoke")
    with pytest.raises(L.LaunchError, match="task imagenet_knn: no config key 'k'"):
        L._check_cfg_options({"imagenet_knn.k": 5}, "table3", "smoke")


# ------------------------------------------------------------------------------------------ SLURM states
@pytest.mark.parametrize("text, state", [
    ("CANCELLED by 0", "cancelled"), ("CANCELLED by 1000", "cancelled"), ("CANCELLED+", "cancelled"), ("CA", "cancelled"),
    ("NODE_FAIL", "failed"), ("PREEMPTED", "failed"), ("OUT_OF_MEMORY", "failed"), ("OUT_OF_ME+", "unknown"),
    ("OOM", "failed"), ("TIMEOUT", "failed"), ("FAILED", "failed"), ("BOOT_FAIL", "failed"), ("DEADLINE", "failed"),
    ("COMPLETED", "failed"),  # exit 0 but no result file: the result is what status trusts
    ("PENDING", "pending"), ("PD", "pending"), ("REQUEUED", "pending"), ("CONFIGURING", "pending"),
    ("RUNNING", "running"), ("R", "running"), ("COMPLETING", "running"), ("SUSPENDED", "running"),
    ("SOME_FUTURE_STATE", "unknown"),
])  # fmt: skip
def test_every_slurm_state_maps_and_an_unknown_one_is_never_running(text, state):
    # The codes and names of https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES; sacct writes
    # "CANCELLED by <uid>" and cuts long names with a "+" (a cut name is no state: unknown, not a guess).
    assert L.slurm_state(text)[0] == state


def test_the_readmes_status_table_names_every_slurm_state_with_its_status():
    """The README's table of what `status` reports (section "On a cluster") against SLURM_STATES: each state is in
    the first row that names it with the status launch.py gives it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### On a cluster"):]
    section = section[: section.index("\n### ", 1)]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.strip().startswith("| ") and "`status`" not in line.split("|")[2]]  # fmt: skip
    assert len(rows) >= 10
    for word, (state, _) in L.SLURM_STATES.items():
        row = next((r for r in rows if re.search(rf"\b{word}\b", r[0])), None)
        assert row is not None, f"{word} is not in the README's status table"
        assert row[1] == f"`{state}`", f"README says {word} -> {row[1]}; launch.py says {state}"


def _slurm_entries(tmp_path, labels):
    folder = tmp_path / "launch" / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"label": lab, "task": "t", "profile": "paper", "job_id": str(100 + i), "launcher": "slurm",
                "folder": str(folder)} for i, lab in enumerate(labels)]  # fmt: skip
    (tmp_path / "launch" / L.MANIFEST).write_text("".join(json.dumps(e) + "\n" for e in entries))
    import submitit

    return {e["label"]: submitit.core.utils.JobPaths(folder, job_id=e["job_id"], task_id=0) for e in entries}


def test_status_from_sacct_else_squeue_else_the_jobs_own_files(tmp_path, monkeypatch):
    from submitit.core.utils import cloudpickle_dump

    paths = _slurm_entries(tmp_path, ["cancelled", "oom", "queued", "running", "timeout_log", "gone", "result"])
    sacct = {"100": "CANCELLED by 0\n", "101": "OUT_OF_MEMORY\n"}  # sacct knows only these two (slurmdbd lag)
    squeue = {"102": "PENDING\n", "103": "RUNNING\n"}  # the rest left the queue: squeue prints nothing

    def query(command):
        job = command[command.index("-j") + 1]
        return sacct.get(job, "") if command[0] == "sacct" else squeue.get(job, "")

    monkeypatch.setattr(L, "_slurm_query", query)
    for p in paths.values():
        p.stdout.write_text("started\n")
    paths["timeout_log"].stderr.write_text(
        "slurmstepd: error: *** JOB 104 ON node1 CANCELLED AT 2026-12-07T10:00:00 DUE TO TIME LIMIT ***\n")
    paths["gone"].stderr.write_text("Traceback ...\n")
    cloudpickle_dump(("success", {}), paths["result"].result_pickle)  # done, whatever SLURM says
    rows = {r["backbone"]: r for r in L.status_rows(tmp_path)}
    assert {k: r["state"] for k, r in rows.items()} == {
        "cancelled": "cancelled", "oom": "failed", "queued": "pending", "running": "running",
        "timeout_log": "failed", "gone": "failed", "result": "done"}  # fmt: skip
    assert "CANCELLED by 0" in rows["cancelled"]["detail"] and "--mem-gb" in rows["oom"]["detail"]
    assert "time limit" in rows["timeout_log"]["detail"] and "no sacct" in rows["timeout_log"]["detail"]
    assert "left the queue without a result" in rows["gone"]["detail"]
    assert L.format_status(list(rows.values())).splitlines()[-1] == (
        "1 done, 1 running, 3 failed, 1 pending, 1 cancelled")

    monkeypatch.setattr(L, "_slurm_query", lambda command: None)  # neither sacct nor squeue answers
    rows = {r["backbone"]: r for r in L.status_rows(tmp_path)}
    assert {k: r["state"] for k, r in rows.items() if k != "result"} == dict.fromkeys(
        ["cancelled", "oom", "queued", "running", "timeout_log", "gone"], "unknown")  # never "running"


def test_slurm_query_treats_an_invalid_job_id_as_gone(tmp_path, monkeypatch):
    fake = tmp_path / "squeue"
    fake.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert L._slurm_query(["squeue", "-h", "-j", "7", "-o", "%T"]) == ""
    fake.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    assert L._slurm_query(["squeue", "-h", "-j", "7", "-o", "%T"]) is None


# ------------------------------------------------------------------------------------------ multi-task jobs
class _FakeJob:
    """What submitit's Job does for a job of several tasks: result() asserts, results() lists every task's."""

    def __init__(self, job_id, outcomes):
        self.job_id, self._outcomes, self._sub_jobs = job_id, outcomes, len(outcomes) > 1

    def done(self):
        return True

    def results(self):
        for outcome in self._outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return list(self._outcomes)

    def result(self):
        outcomes = self.results()
        assert not self._sub_jobs, "You should use `results()` if your job has subtasks."
        return outcomes[0]


def test_wait_all_counts_a_job_of_several_tasks_that_succeeded_as_done():
    said = []
    jobs = [_FakeJob("1", [{"ran": 1}, {"ran": 1}]), _FakeJob("2", [{"ran": 1}]),
            _FakeJob("3", [{"ran": 1}, RuntimeError("rank 1: [x] t: CUDA out of memory")])]  # fmt: skip
    assert L.wait_all(jobs, poll_s=0, say=said.append) == 1
    assert said == ["job 1: done (2 task(s))", "job 2: done (1 task(s))",
                    "job 3: failed: rank 1: [x] t: CUDA out of memory"]  # fmt: skip


# ------------------------------------------------------------------------------------------ run flags
class _Handle:
    def __init__(self, job_id):
        self.job_id = job_id

    def done(self):
        return True

    def results(self):
        return [{}]


class _RunNow:
    """An executor that runs the submitted job here and now (as submitit's job would on its node)."""

    calls = 0

    def submit(self, fn, *args):
        _RunNow.calls += 1
        fn(*args)
        return _Handle(str(4000 + _RunNow.calls))


def _run_flag_values(tmp_path):
    from benchmarks.core.scalars import tensorboard_problem
    from benchmarks.depth.released import released_head_file

    heads = tmp_path / "heads"
    heads.mkdir(exist_ok=True)
    (heads / released_head_file("dinov2_vits14", "linear1")).write_bytes(b"")
    values = {
        "--data-root": [str(tmp_path / "data")], "--cache-dir": [str(tmp_path / "cache")], "--resume": [],
        "--device": ["cpu"], "--seed": ["7"], "--seeds": ["7"], "--num-workers": ["3"], "--threads": ["2"], "--jobs": ["2"],
        "--no-progress": [], "--head-weights": [str(heads)], "--cfg-options": ["depth_nyu_linear1.lr=0.5"],
        "--tensorboard": [str(tmp_path / "tb")],
    }  # fmt: skip
    if tensorboard_problem():
        values.pop("--tensorboard")
    return values


def _run_flags():
    """Every flag of `run` but the launcher's own and those that name what runs (suite, backbones, out)."""
    from benchmarks.cli import build_parser

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    launcher = {a.dest for g in run._action_groups if g.title and g.title.startswith("cluster") for a in g._group_actions}
    return sorted(a.option_strings[-1] for a in run._actions if a.option_strings and a.dest not in launcher
                  and a.dest not in ("help", "suite", "profile", "backbone", "out"))  # fmt: skip


def _resolved(monkeypatch, argv):
    """(torch threads, run_suite's kwargs) as the run would apply them, with run_suite stubbed out."""
    import torch

    from benchmarks.cli import main
    from benchmarks.core import runner
    from benchmarks.core.job import RunSummary

    seen = []

    def fake_run_suite(suite, backbones, **kwargs):
        kwargs.pop("seed_pass", None)  # --seeds' pass (k, n): names the run id, not what the run does
        seen.append((torch.get_num_threads(), {**kwargs, "cache_dir": str(kwargs.get("cache_dir") or
                                                                             runner.default_cache_dir())}))
        return RunSummary(run_id="r", suite=suite, profile=kwargs["profile"])

    monkeypatch.setattr(runner, "run_suite", fake_run_suite)
    monkeypatch.setattr(L, "make_executor", lambda *a, **k: _RunNow())
    torch.set_num_threads(3)  # neither 1 (the smoke default) nor 2 (the flag below)
    assert main(argv) == 0
    assert len(seen) == 1
    threads, kwargs = seen[0]
    assert kwargs.pop("out") == argv[argv.index("--out") + 1]
    return threads, kwargs


@pytest.mark.parametrize("flag", [None, *_run_flags()])
def test_every_run_flag_reaches_the_job_as_in_process(flag, tmp_path, monkeypatch):
    import torch

    values = _run_flag_values(tmp_path)
    if flag is not None and flag not in values:
        if flag == "--tensorboard":
            pytest.skip("tensorboard is not installed")
        raise AssertionError(f"run flag {flag}: add a value to _run_flag_values and pass it to the jobs")
    extra = [] if flag is None else [flag, *values[flag]]
    base = ["run", "--suite", "depth_nyu_linear1", "--profile", "smoke", "--backbone", "dinov2_vits14"]
    before = torch.get_num_threads()
    try:
        ours = _resolved(monkeypatch, [*base, "--out", str(tmp_path / "a"), *extra])
        job = _resolved(monkeypatch, [*base, "--out", str(tmp_path / "b"), "--launcher", "local", *extra])
        default = _resolved(monkeypatch, [*base, "--out", str(tmp_path / "c")])
    finally:
        torch.set_num_threads(before)
    assert job == ours
    if flag is not None:  # the flag changed what the run does (else this test would pass on a dropped flag)
        assert ours != default, flag
    else:
        assert ours[0] == 1  # the smoke default of one thread, in the job too


def test_smoke_twin_is_repaired_with_the_runs_threads(tmp_path, monkeypatch):
    import torch

    from benchmarks.core import backbones as B

    seen = []
    monkeypatch.setattr(B, "repaired_twin", lambda spec, cache, say: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        L.launch("imagenet_knn", None, launcher="local", profile="smoke", out=tmp_path, cache_dir=tmp_path,
                 dry_run=True, say=lambda _: None)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert seen == [1]  # as in-process: the smoke profile's one thread, so the twin has the same weights


def test_head_weights_missing_heads_refused_before_any_submission(tmp_path, monkeypatch, capsys):
    from benchmarks.cli import main

    monkeypatch.setattr(L, "make_executor", lambda *a, **k: pytest.fail("submitted"))
    (tmp_path / "empty").mkdir()
    argv = ["run", "--suite", "depth_nyu_linear1", "--profile", "smoke", "--backbone", "dinov2_vits14", "--out",
            str(tmp_path / "out"), "--head-weights", str(tmp_path / "empty")]  # fmt: skip
    capsys.readouterr()
    assert main([*argv, "--launcher", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "released head" in err and "is missing" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ submission errors
class _Refusing:
    """sbatch accepts the first job and refuses the next (a QOS limit), as submitit reports it."""

    calls = 0

    def submit(self, fn, *args):
        from submitit.core.utils import FailedJobError

        _Refusing.calls += 1
        if _Refusing.calls > 1:
            print("sbatch: error: QOSMaxSubmitJobPerUserLimit", file=sys.stderr)  # submitit echoes it
            raise FailedJobError("sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission "
                                 "failed: Job violates accounting/QOS policy (job submit limit, user's size and/or "
                                 "time limits)")  # fmt: skip
        return _Handle("4242")


def test_refused_submission_is_one_line_and_the_submitted_job_is_recorded(tmp_path, monkeypatch, capsys):
    from benchmarks.cli import main

    _Refusing.calls = 0
    monkeypatch.setattr(L, "make_executor", lambda *a, **k: _Refusing())
    capsys.readouterr()
    code = main(["run", "--suite", "imagenet_knn", "--profile", "smoke", "--backbone", "a=dinov2_tiny",
                 "--backbone", "b=dinov2_tiny_reg", "--out", str(tmp_path), "--launcher", "slurm"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: slurm refused job [b] imagenet_knn: sbatch: error: "
                                                   "Batch job submission failed: Job violates")  # fmt: skip
    assert "submitted before it: 1 of 2 job(s) ([a] imagenet_knn (job 4242))" in err
    assert [(e["label"], e["job_id"]) for e in L.read_manifest(tmp_path)] == [("a", "4242")]
    assert [r["backbone"] for r in L.status_rows(tmp_path)] == ["a"]  # status sees the job that was submitted


def test_a_first_refusal_says_nothing_was_submitted(tmp_path, monkeypatch, capsys):
    """No job accepted: the line says so and points at no jobs file (none is written)."""
    from benchmarks.cli import main

    _Refusing.calls = 1  # the next call is refused
    monkeypatch.setattr(L, "make_executor", lambda *a, **k: _Refusing())
    capsys.readouterr()
    code = main(["run", "--suite", "imagenet_knn", "--profile", "smoke", "--backbone", "a=dinov2_tiny",
                 "--out", str(tmp_path), "--launcher", "slurm"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: slurm refused job [a] imagenet_knn: sbatch: error: Batch job submission failed")
    assert err.rstrip().endswith("; nothing submitted (0 of 1 job(s))")
    assert not (tmp_path / L.LAUNCH_DIR / L.MANIFEST).exists() and L.status_rows(tmp_path) == []


# ------------------------------------------------------------------------------------------ resources
def test_resources_per_task_with_overrides(tmp_path, monkeypatch):
    smoke, _ = L.plan_jobs("imagenet_knn", ["x=dinov2_tiny"], profile="smoke", cache_dir=tmp_path)
    assert [(j.gpus, j.cpus_per_task, j.mem_gb, j.timeout_min) for j in smoke] == [(0, 1, 4, 30)]
    paper, _ = L.plan_jobs("imagenet_knn", ["dinov2_vitg14"], profile="paper", cache_dir=tmp_path)
    assert [(j.gpus, j.cpus_per_task, j.mem_gb, j.timeout_min) for j in paper] == [(1, 9, 64, 1440)]  # 8 workers + 1
    fewer, _ = L.plan_jobs("imagenet_knn", ["dinov2_vitg14"], profile="paper", cache_dir=tmp_path,
                           run_args=L.RunArgs(num_workers=3))  # fmt: skip
    assert fewer[0].cpus_per_task == 4
    forced, _ = L.plan_jobs("imagenet_knn", ["dinov2_vitg14"], profile="paper", cache_dir=tmp_path,
                            resources=L.Resources(gpus=2, cpus_per_task=5, mem_gb=32, timeout_min=90))  # fmt: skip
    assert [(j.gpus, j.tasks, j.cpus_per_task, j.mem_gb, j.timeout_min) for j in forced] == [(2, 2, 5, 32, 90)]
    # a measured task time (median of its records in --out): 3x + 10 min
    monkeypatch.setattr(L, "load_records", lambda out, missing_ok: [
        {"task": "imagenet_knn", "profile": "paper", "wall_time_s": 1200.0},
        {"task": "imagenet_knn", "profile": "paper", "wall_time_s": 1800.0},
        {"task": "imagenet_knn", "profile": "paper", "wall_time_s": 1300.0}])  # fmt: skip
    measured, _ = L.plan_jobs("imagenet_knn", ["dinov2_vitg14"], profile="paper", cache_dir=tmp_path, out=tmp_path)
    assert measured[0].timeout_min == math.ceil(3 * 1300 / 60) + 10
    with pytest.raises(L.LaunchError, match="gpus >= 0"):
        L.plan_jobs("imagenet_knn", ["dinov2_vitg14"], profile="paper", cache_dir=tmp_path,
                    resources=L.Resources(gpus=-1))  # fmt: skip
    params = L.executor_parameters("slurm", smoke[0], partition="cpu", slurm_params={"account": "me"})
    assert "gpus_per_node" not in params  # a CPU partition refuses any GPU request, even of 0
    assert params["cpus_per_task"] == 1 and params["mem_gb"] == 4 and params["slurm_partition"] == "cpu"
    assert params["slurm_additional_parameters"] == {"account": "me"}
    assert L.executor_parameters("slurm", forced[0])["mem_gb"] == 64  # per node: 2 tasks of 32 GB


def test_dry_run_prints_the_sbatch_request_and_submits_nothing(tmp_path, capsys):
    from benchmarks.cli import main

    capsys.readouterr()
    assert main(["run", "--suite", "imagenet_knn", "--profile", "paper", "--backbone", "dinov2_vitg14", "--out",
                 str(tmp_path / "out"), "--launcher", "slurm", "--dry-run", "--slurm-partition", "gpu",
                 "--slurm-param", "account=proj", "--slurm-param", "qos=high", "--slurm-mem-gb", "48"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[dinov2_vitg14] imagenet_knn: 1 GPU(s), 1 task(s) x 9 CPU(s), 48 GB per task, 1440 min"
    sbatch = {line.strip() for line in out[1:-1]}
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=9", "#SBATCH --mem=48GB", "#SBATCH --time=1440",
            "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=high"} <= sbatch  # fmt: skip
    assert out[-1] == "dry run: 1 job(s) not submitted"
    assert not (tmp_path / "out").exists()
    assert main(["run", "--suite", "imagenet_knn", "--profile", "smoke", "--backbone", "x=dinov2_tiny", "--out",
                 str(tmp_path / "out"), "--launcher", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0 GPU(s)" in out and "gpus" not in out.split("\n", 1)[1] and "--cpus-per-task=1" in out


@pytest.mark.slow
def test_a_job_of_two_tasks_that_both_succeed_is_done(tmp_path):
    """A real submitit job of 2 tasks (2 'GPUs', gloo on the CPU): wait_all reads every task's result (results()),
    so it is not counted as failed, and the record is the 2-rank run's."""
    said = []
    jobs = L.launch("imagenet_knn", ["x=dinov2_tiny_defective"], launcher="local", profile="smoke", out=tmp_path / "out",
                    cache_dir=tmp_path / "cache", gpus=2, run_args=L.RunArgs(device="cpu", no_progress=True),
                    say=lambda _: None)  # fmt: skip
    assert L.wait_all(jobs, poll_s=0.2, say=said.append) == 0
    assert said == [f"job {jobs[0].job_id}: done (2 task(s))"]
    (record,) = load_records(tmp_path / "out")
    assert record["device"]["world_size"] == 2
    assert [r["state"] for r in L.status_rows(tmp_path / "out")] == ["done"]


@pytest.mark.parametrize("log, state", [
    ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-12-07T10:00:00 ***", "CANCELLED"),
    ("slurmstepd: error: *** STEP 7.0 ON n1 CANCELLED AT 2026-12-07T10:00:00 DUE TO TIME LIMIT ***", "TIMEOUT"),
    ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-12-07T10:00:00 DUE TO PREEMPTION ***", "PREEMPTED"),
    ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-12-07T10:00:00 DUE TO NODE FAILURE ***", "NODE_FAIL"),
    ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=7.0.", "OUT_OF_MEMORY"),
    ("Traceback (most recent call last):\nRuntimeError: boom", None),
])  # fmt: skip
def test_a_dead_jobs_own_log_says_how_it_ended(tmp_path, log, state):
    # slurmstepd's kill line (src/slurmd/slurmstepd/req.c, "*** %s ON %s CANCELLED AT %s%s ***") and the cgroup OOM line
    paths = _slurm_entries(tmp_path, ["x"])["x"]
    paths.stderr.write_text("started\n" + log + "\n")
    assert L._stderr_verdict(paths) == state
