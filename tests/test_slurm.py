"""``--launcher slurm`` on a real SLURM cluster (issue 24): records equal an in-process run's (also over ``--seeds``,
one job per seed), a cancelled job
shows as cancelled in ``status`` and ``--resume --wait`` completes it with the uninterrupted metrics, and a
refused submission is one line, exit 2.

These run only with a cluster: ``bash .ci/slurm/run.sh`` stands up a single-node one (``.ci/slurm/up.sh``), runs
``pytest -m slurm`` with ``SINDER_SLURM_CONF`` set to its slurm.conf, and stops it. Without that variable they
are skipped (the reason says so); with it, a cluster that does not answer fails them (never a silent skip).
Everything goes through ``sinder-bench`` as a user types it, in subprocesses that see the cluster's SLURM_CONF.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.core import launch as L
from benchmarks.core.results import load_records

pytestmark = pytest.mark.slurm

CONF_ENV = "SINDER_SLURM_CONF"
ROOT = Path(__file__).resolve().parents[1]
BACKBONE = "dinov2_tiny_defective"
# Long enough that scancel lands mid-training after a checkpoint on a fast machine too (slurmstepd takes about a
# second to kill the job; 150 iterations take ~6 s on 2 loaded cores), short enough for CI.
DEPTH = ["--suite", "depth_nyu_linear1", "--backbone", BACKBONE, "--cfg-options",
         "depth_nyu_linear1.iterations=300", "depth_nyu_linear1.checkpoint_every=5"]  # fmt: skip
DEPTH_ITERATIONS = 300
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]  # os.environ + SLURM_CONF + this checkout first on PYTHONPATH
    partition: str  # its default partition

    def slurm(self, *command: str, check: bool = True) -> str:
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode:
            pytest.fail(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def bench(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """``sinder-bench ARGS`` in a subprocess (the installed entry point is this module's ``main``)."""
        return subprocess.run([sys.executable, "-m", "benchmarks.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip

    def queue_state(self, job_id: str) -> str:
        """squeue's state of a job, "" once it left the queue."""
        return self.slurm("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False).strip()

    def sacct_state(self, job_id: str) -> str:
        return self.slurm("sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id).strip()

    def final_state(self, job_id: str) -> str:
        """sacct's state once the job has ended (a job's result file is written a moment before it ends)."""
        self.wait_gone(job_id)
        return self.sacct_state(job_id)

    def wait_gone(self, job_id: str, limit_s: float = 120) -> None:
        """Until the job's processes are gone (sacct says CANCELLED before slurmstepd has killed them)."""
        deadline = time.monotonic() + limit_s
        while self.queue_state(job_id) in ACTIVE:
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} still {self.queue_state(job_id)} after {limit_s:g} s")
            time.sleep(0.2)


def _cluster_problem(env: dict[str, str]) -> str | None:
    if shutil.which("sinfo", path=env.get("PATH")) is None:
        return "sinfo is not installed here"
    try:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30,
                              check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s"
    if done.returncode:
        return f"sinfo exit {done.returncode}: {done.stderr.strip()}"
    if not {"idle", "mix", "alloc"} & set(done.stdout.split()):
        return f"no node is up (sinfo's node states: {done.stdout.split() or 'none'})"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    conf = os.environ.get(CONF_ENV)
    if not conf:
        pytest.skip(f"no SLURM cluster: ${CONF_ENV} is not set (bash .ci/slurm/run.sh stands one up and runs "
                    "these tests with it)")  # fmt: skip
    if not Path(conf).is_file():
        pytest.fail(f"${CONF_ENV}={conf}: no such file")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "SLURM_CONF": conf, "PYTHONPATH": path}
    problem = _cluster_problem(env)
    if problem:  # a cluster was named: one that does not answer is a failure, not a skip
        pytest.fail(f"${CONF_ENV}={conf}: {problem}")
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], env=env, capture_output=True, text=True,
                                check=True).stdout.split()  # fmt: skip
    default = next((p for p in partitions if p.endswith("*")), partitions[0]).rstrip("*")
    found = Cluster(env, default)
    yield found
    # Leave nothing queued: every job these tests submitted (the launch manifests under their folders).
    base = tmp_path_factory.getbasetemp()
    ids = {e["job_id"] for m in base.rglob(L.MANIFEST) for e in L.read_manifest(m.parent.parent)
           if e.get("launcher") == "slurm"}  # fmt: skip
    if ids:
        found.slurm("scancel", *sorted(ids), check=False)


def _records(folder: Path) -> dict[tuple[str, str], dict]:
    return {(r["backbone"]["label"], r["task"]): r for r in load_records(folder)}


def _same_records(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref) and ref
    for key, record in ref.items():
        got = ours[key]
        assert got["identity"] == record["identity"], key
        assert got["backbone"]["weights_sha256"] == record["backbone"]["weights_sha256"], key
        assert got["hparams"] == record["hparams"], key
        assert got["metrics"] == pytest.approx(record["metrics"], rel=1e-9, abs=1e-12), key


def _status(cluster: Cluster, out: Path) -> dict[tuple[str, str], dict]:
    done = cluster.bench("status", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    return {(r["backbone"], r["task"]): r for r in json.loads(done.stdout)}


# ------------------------------------------------------------------------------ 1. records of an in-process run
def test_slurm_jobs_write_the_records_of_an_in_process_run(cluster, tmp_path):
    """The README's CPU-cluster command (table3 smoke, its default backbones: the defective model and its
    SINDER twin) against the same run in-process; separate caches, so the twin is repaired twice."""
    common = ["run", "--suite", "table3", "--profile", "smoke", "--no-progress"]
    ref = cluster.bench(*common, "--out", str(tmp_path / "inproc"), "--cache-dir", str(tmp_path / "c1"))
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    got = cluster.bench(*common, "--out", str(tmp_path / "slurm"), "--cache-dir", str(tmp_path / "c2"),
                        "--launcher", "slurm", "--partition", cluster.partition, "--wait")  # fmt: skip
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    _same_records(_records(tmp_path / "slurm"), _records(tmp_path / "inproc"))
    manifest = L.read_manifest(tmp_path / "slurm")
    assert len(manifest) == len(_records(tmp_path / "inproc"))
    assert {e["launcher"] for e in manifest} == {"slurm"}
    # SLURM ran them: its accounting says so.
    assert {e["job_id"]: cluster.final_state(e["job_id"]) for e in manifest} == {
        e["job_id"]: "COMPLETED" for e in manifest}  # fmt: skip
    assert {r["state"] for r in _status(cluster, tmp_path / "slurm").values()} == {"done"}


def test_seeds_submit_one_job_per_seed_and_record_what_in_process_seeds_record(cluster, tmp_path):
    """``run --seeds 0,1 --launcher slurm --wait``: a job per (backbone, task, seed), each recording what the
    in-process ``--seeds 0,1`` records, and ``status`` keeps the seeds apart (a row each, all done)."""
    common = ["run", "--suite", "imagenet_knn", "--profile", "smoke", "--seeds", "0,1", "--no-progress"]
    ref = cluster.bench(*common, "--out", str(tmp_path / "inproc"), "--cache-dir", str(tmp_path / "c1"))
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    got = cluster.bench(*common, "--out", str(tmp_path / "slurm"), "--cache-dir", str(tmp_path / "c2"),
                        "--launcher", "slurm", "--partition", cluster.partition, "--wait")  # fmt: skip
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]

    def by_seed(folder):
        return {(r["backbone"]["label"], r["task"], r["seed"]): r for r in load_records(folder)}

    ours, theirs = by_seed(tmp_path / "slurm"), by_seed(tmp_path / "inproc")
    assert {key[2] for key in theirs} == {0, 1}
    _same_records(ours, theirs)
    manifest = L.read_manifest(tmp_path / "slurm")
    assert sorted(e.get("seed", 0) for e in manifest) == sorted(key[2] for key in theirs)
    assert {cluster.final_state(e["job_id"]) for e in manifest} == {"COMPLETED"}
    done = cluster.bench("status", "--out", str(tmp_path / "slurm"), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == len(theirs) and {r["state"] for r in rows} == {"done"}


# ---------------------------------------------------------------------------- 2-3. scancel, status, --resume
@pytest.fixture(scope="module")
def cancelled(cluster, tmp_path_factory):
    """An uninterrupted in-process depth run, and the same as a SLURM job cancelled after a mid-run checkpoint:
    (root, launch args, the cancelled job's id, the checkpoint's iteration when it died)."""
    import torch

    root = tmp_path_factory.mktemp("cancel")
    ref = cluster.bench("run", *DEPTH, "--profile", "smoke", "--no-progress", "--out", str(root / "inproc"),
                        "--cache-dir", str(root / "c1"))  # fmt: skip
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    args = ["run", *DEPTH, "--profile", "smoke", "--no-progress", "--out", str(root / "slurm"), "--cache-dir",
            str(root / "c2"), "--launcher", "slurm", "--partition", cluster.partition]  # fmt: skip
    sub = cluster.bench(*args)
    assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
    (job_id,) = [e["job_id"] for e in L.read_manifest(root / "slurm")]
    deadline = time.monotonic() + 600
    while not list((root / "c2" / "work").glob("depth_nyu_linear1-*/depth_head.pt")):
        state = cluster.queue_state(job_id)
        if state not in ACTIVE or time.monotonic() > deadline:
            pytest.fail(f"job {job_id} wrote no checkpoint ({state or 'left the queue'}); see "
                        f"{root / 'slurm' / L.LAUNCH_DIR}")  # fmt: skip
        time.sleep(0.05)
    cluster.slurm("scancel", job_id)
    cluster.wait_gone(job_id)
    (checkpoint,) = (root / "c2" / "work").glob("depth_nyu_linear1-*/depth_head.pt")
    step = int(torch.load(checkpoint, weights_only=True)["step"])
    return root, args, job_id, step


def test_a_cancelled_job_shows_as_cancelled(cluster, cancelled):
    root, _, job_id, step = cancelled
    assert 0 < step < DEPTH_ITERATIONS, f"the job finished before scancel ({step} of {DEPTH_ITERATIONS})"
    assert cluster.sacct_state(job_id).startswith("CANCELLED")
    assert not load_records(root / "slurm", missing_ok=True)
    (row,) = _status(cluster, root / "slurm").values()
    assert row["state"] == "cancelled" and f"job {job_id}: " in row["detail"] and "CANCELLED" in row["detail"]
    text = cluster.bench("status", "--out", str(root / "slurm")).stdout
    assert text.splitlines()[-1] == "0 done, 0 running, 0 failed, 0 pending, 1 cancelled"


def test_resume_wait_completes_it_with_the_uninterrupted_metrics(cluster, cancelled):
    root, args, job_id, step = cancelled
    assert 0 < step < DEPTH_ITERATIONS  # it resumes a training cut short, not a finished one
    got = cluster.bench(*args, "--resume", "--wait")
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    _same_records(_records(root / "slurm"), _records(root / "inproc"))
    entries = L.read_manifest(root / "slurm")
    assert [e["job_id"] for e in entries][0] == job_id and len(entries) == 2
    assert cluster.final_state(entries[-1]["job_id"]) == "COMPLETED"
    assert [r["state"] for r in _status(cluster, root / "slurm").values()] == ["done"]


# ------------------------------------------------------------------------------ 4. a refused submission
@pytest.mark.parametrize("refusal", ["MaxSubmitJobs", "partition"])
def test_a_refused_submission_is_one_line_naming_what_was_submitted(cluster, tmp_path, refusal):
    """sbatch refuses the second job (the user's MaxSubmitJobs=1 in slurmdbd) or the first (no such partition):
    exit 2, one line, no traceback; the job accepted before it is recorded and followed by status."""
    user = getpass.getuser()
    out = tmp_path / "out"
    args = ["run", "--suite", "imagenet_knn,imagenet_linear", "--backbone", BACKBONE, "--profile", "smoke",
            "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--launcher", "slurm",
            "--partition", cluster.partition if refusal == "MaxSubmitJobs" else "no_such_partition"]  # fmt: skip
    deadline = time.monotonic() + 300  # the limit counts queued jobs: none of the earlier tests' may be left
    while cluster.slurm("squeue", "-h", "-u", user, "-o", "%i").split():
        assert time.monotonic() < deadline, "earlier jobs still queued"
        time.sleep(0.5)
    limit = ["sacctmgr", "-i", "modify", "user", "where", f"name={user}", "set"]
    if refusal == "MaxSubmitJobs":
        cluster.slurm(*limit, "MaxSubmitJobs=1")
    try:
        got = cluster.bench(*args)
    finally:
        if refusal == "MaxSubmitJobs":
            cluster.slurm(*limit, "MaxSubmitJobs=-1")  # no limit again
    entries = L.read_manifest(out)
    if entries:
        cluster.slurm("scancel", *(e["job_id"] for e in entries), check=False)  # not needed any further
    assert got.returncode == 2, got.stdout[-2000:] + got.stderr[-2000:]
    assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr, got.stderr
    head = f"error: slurm refused job [{BACKBONE}] imagenet_{'linear' if refusal == 'MaxSubmitJobs' else 'knn'}: "
    assert got.stderr.startswith(head + "sbatch: error: Batch job submission failed: "), got.stderr
    if refusal == "partition":
        assert "Invalid partition name specified; nothing submitted (0 of 2 job(s))" in got.stderr
        assert entries == [] and "submitted job" not in got.stdout
        return
    assert "Job violates accounting/QOS policy" in got.stderr
    (entry,) = entries
    assert entry["task"] == "imagenet_knn" and entry["label"] == BACKBONE
    assert (f"submitted before it: 1 of 2 job(s) ([{BACKBONE}] imagenet_knn (job {entry['job_id']})), recorded in "
            f"{out / L.LAUNCH_DIR / L.MANIFEST}") in got.stderr  # fmt: skip
    assert cluster.sacct_state(entry["job_id"]) != ""  # SLURM knows the job the line names
    assert list(_status(cluster, out)) == [(BACKBONE, "imagenet_knn")]
