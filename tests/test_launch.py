"""The submitit fan-out (benchmarks/core/launch.py): local jobs write the records of an in-process run, status
reads done / running / failed / pending, and a requeued job resumes."""

from __future__ import annotations

import json
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
                    cache_dir=cache, gpus=0, run_kwargs=RUN, say=lambda _: None)  # fmt: skip
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
    requeued = L.BenchJob().checkpoint(job.__dict__, kwargs)  # what submitit calls on preemption or time-out
    assert requeued.kwargs == {} and requeued.args[1]["resume"] is True
    before = len(load_records(root / "fan"))
    summary = requeued.function(*requeued.args)
    assert [s["task"] for s in summary["skipped"]] == ["imagenet_knn"] and not summary["ran"]
    assert len(load_records(root / "fan")) == before


def test_status_from_job_files(tmp_path):
    import submitit
    from submitit.core.utils import cloudpickle_dump

    folder = tmp_path / "launch" / "submitit"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    entries = [
        {"label": "a", "task": "t", "profile": "paper", "job_id": "101", "launcher": "slurm"},  # nothing yet
        {"label": "b", "task": "t", "profile": "paper", "job_id": "102", "launcher": "slurm"},  # has a log
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
    rows = {r["backbone"]: r for r in L.status_rows(tmp_path)}
    assert {k: r["state"] for k, r in rows.items()} == {"a": "pending", "b": "running", "c": "failed", "d": "failed"}
    assert rows["c"]["detail"].endswith("RuntimeError: [b] t: CUDA out of memory")
    assert "without a result" in rows["d"]["detail"]
    text = L.format_status(list(rows.values()))
    assert text.splitlines()[-1] == "0 done, 1 running, 2 failed, 1 pending"


def test_plan_takes_resources_from_flags_else_defaults(tmp_path):
    jobs, missing = L.plan_jobs("imagenet_knn,imagenet_knn", ["x=dinov2_tiny"], profile="smoke", cache_dir=tmp_path)
    assert [(j.label, j.task, j.gpus, j.timeout_min) for j in jobs] == [("x", "imagenet_knn", 1, 30)]
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
