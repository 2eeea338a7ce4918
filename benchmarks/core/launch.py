"""Fan a suite out as one submitit job per (backbone, task), and say where each pair stands.

``sinder-bench run ... --launcher slurm`` submits every (backbone, task) of the suite as its own Slurm job through
submitit (the launcher DINOv2's evaluations use); ``--launcher local`` runs the same jobs as local processes
through submitit's LocalExecutor (what CI tests). Each job calls :func:`benchmarks.core.runner.run_suite` for its
one task and one backbone into the same records folder, so the records are those of an in-process run. A job
asking for N > 1 GPUs runs N tasks (processes) per node; each gets torchrun's environment (RANK, WORLD_SIZE,
MASTER_ADDR, ...) from submitit's job environment, so the runner's torch.distributed code shards the work.

Preemption and time limits: :class:`BenchJob` is a ``submitit.helpers.Checkpointable``; on a time-out or a
preemption submitit requeues it with resume on, and the rerun skips what is recorded and continues the long
trainings from their mid-run checkpoints (benchmarks/core/checkpointing.py).

The ``run`` flags travel to every job as one :class:`benchmarks.core.run_args.RunArgs`, resolved inside the job
by the code an in-process run uses. Each job asks for its task's resources (:func:`task_resources`; the
``--slurm-*`` flags override them, ``--slurm-param`` adds site specifics); ``--dry-run`` prints the requests.

Bookkeeping lives in ``<out>/launch/``: ``jobs.jsonl`` (one line per submitted job, written as soon as it is
submitted: backbone, task, profile, resources, job id, submitit folder) and ``submitit/`` (submitit's pickles
and logs). No ``.json`` file goes there, so the folder of run records stays readable by ``report`` and
``compare``. ``sinder-bench status --out DIR`` reads the records and these files: done / running / failed (with
the error) / pending / cancelled / unknown for each (backbone, task); a SLURM job's state comes from sacct, else
squeue, else its own log (:data:`SLURM_STATES`), never "running" without evidence.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sinder.utils.atomic import atomic_write_text

from . import backbones as B
from .progress import expected_durations
from .registry import get_suite, get_task, list_tasks
from .results import load_records, utc_now
from .run_args import RunArgs, apply_threads
from .task_config import default_loader_workers

LAUNCHERS = ("inprocess", "local", "slurm")
LAUNCH_DIR = "launch"
MANIFEST = "jobs.jsonl"
# Time limit of a job when neither --timeout-min nor the task's config (``launch: {timeout_min: ...}``) sets one
# and --out holds no record of the task to measure it from.
DEFAULT_TIMEOUT_MIN = {"smoke": 30, "paper": 24 * 60}
# A measured task time (median wall time of its records in --out) becomes a limit of MEASURED_MARGIN times it
# plus MEASURED_EXTRA_MIN (start-up, loading the backbone, a slower node), never under MIN_TIMEOUT_MIN.
MEASURED_MARGIN, MEASURED_EXTRA_MIN, MIN_TIMEOUT_MIN = 3.0, 10, 15
# Memory per task (GB) when neither --mem-gb nor the task's config sets it: the smoke tasks' tiny models and
# synthetic data; a paper job holds a ViT-g, its DataLoader workers' batches and the cached features of a split.
DEFAULT_MEM_GB = {"smoke": 4, "paper": 64}
# GPUs per job by default: the smoke profile runs on CPUs (a CPU partition has no GPU to grant), paper on one GPU.
DEFAULT_GPUS = {"smoke": 0, "paper": 1}
# A pair whose claim another live process holds is skipped by the runner: a scancelled job that slurmstepd has not
# killed yet (submitit ignores SIGTERM: it lives KillWait seconds more, 30 by default) or the same pair launched
# twice. The job waits up to HELD_WAIT_S for the claim (polling every HELD_POLL_S), then runs the pair with
# resume on, so the other's record or checkpoint counts; still held, the job fails saying so (never "done"
# without a record).
HELD_WAIT_S, HELD_POLL_S = 180.0, 2.0
# The states of ``sinder-bench status`` (the last two only when some row has them).
STATES = ("done", "running", "failed", "pending", "cancelled", "unknown")


logger = logging.getLogger(__name__)
  # the default line printer (`say`/`log`): the CLI shows INFO on stdout

class LaunchError(ValueError):
    """A launch cannot start (bad flag, unknown suite, a refused submission); the message names the input and
    the fix."""


@dataclass(frozen=True)
class Resources:
    """What the --gpus / --cpus-per-task / --mem-gb / --timeout-min flags (alias --slurm-*) set for every job;
    None: the task's own request (its config's ``launch`` entry, else the defaults above)."""

    gpus: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int | None = None


@dataclass(frozen=True)
class JobSpec:
    """One (backbone, task) job and the resources it asks for (per task: one task per GPU, at least one)."""

    backbone: str  # the --backbone spec text the job passes to run_suite
    label: str
    task: str
    profile: str
    gpus: int
    timeout_min: int
    cpus_per_task: int = 1
    mem_gb: float = DEFAULT_MEM_GB["smoke"]
    seed: int = 0  # the job's --seed (run --seeds: one job per seed)

    @property
    def tasks(self) -> int:
        return max(1, self.gpus)  # one process per GPU, torchrun style


def suite_tasks(suite: str) -> list[str]:
    """Task names of ``suite`` (a suite, a task, or a comma-separated list of either), in order, no repeats."""
    tasks: list[str] = []
    for name in (s.strip() for s in suite.split(",") if s.strip()):
        try:
            tasks += [t for t in get_suite(name).tasks if t not in tasks]
        except KeyError as err:
            raise LaunchError(err.args[0]) from err
    if not tasks:
        raise LaunchError(f"--suite {suite!r} names no task")
    return tasks


def _backbone_specs(backbones: Sequence[str] | None, profile: str, cache_dir: Path,
                    say: Callable[[str], None]) -> list[B.BackboneSpec]:  # fmt: skip
    if backbones:
        try:
            return [B.parse_backbone_spec(text) for text in backbones]
        except ValueError as err:
            raise LaunchError(str(err)) from err
    if profile != "smoke":
        raise LaunchError("no backbone: pass --backbone SPEC (e.g. dinov2_vitg14); only --profile smoke has defaults")
    # The smoke defaults, resolved here once (the twin's repair too, with the run's threads) so every job gets
    # explicit specs.
    specs = B.smoke_specs()
    twin = B.repaired_twin(specs[0], cache_dir, say)
    return specs + ([twin] if twin is not None else [])


def measured_timeout_min(seconds: float) -> int:
    """A job's time limit from a measured task time in seconds (see MEASURED_MARGIN)."""
    return max(MIN_TIMEOUT_MIN, math.ceil(MEASURED_MARGIN * seconds / 60) + MEASURED_EXTRA_MIN)


def task_resources(name: str, profile: str, run_args: RunArgs, resources: Resources,
                   measured: dict[str, float]) -> tuple[int, int, float, int]:  # fmt: skip
    """(gpus, cpus per task, memory per task in GB, time limit in min) of a job of task ``name``: each the flag
    when given, else the task config's ``launch`` entry, else derived: CPUs = DataLoader workers + 1 (the main
    process), time from the task's measured time (``measured``: task -> median seconds), else the defaults."""
    try:
        launch = dict(get_task(name).config(profile).get("launch") or {})
    except ValueError as err:
        raise LaunchError(str(err)) from err
    gpus = resources.gpus if resources.gpus is not None else launch.get("gpus", DEFAULT_GPUS[profile])
    workers = run_args.num_workers
    if workers is None:  # what the job resolves on a node of CPUs enough (run_args.RunArgs.resolve)
        workers = default_loader_workers(profile, None)
    cpus = resources.cpus_per_task or launch.get("cpus_per_task") or workers + 1
    mem = resources.mem_gb or launch.get("mem_gb") or DEFAULT_MEM_GB[profile]
    if resources.timeout_min is not None:
        limit = resources.timeout_min
    elif launch.get("timeout_min") is not None:
        limit = launch["timeout_min"]
    elif name in measured:
        limit = measured_timeout_min(measured[name])
    else:
        limit = DEFAULT_TIMEOUT_MIN[profile]
    if int(gpus) < 0 or int(cpus) < 1 or float(mem) <= 0 or int(limit) < 1:
        raise LaunchError(f"task {name}: resources gpus={gpus}, cpus_per_task={cpus}, mem_gb={mem}, "
                          f"timeout_min={limit}: give gpus >= 0 and positive CPUs, memory and time")  # fmt: skip
    return int(gpus), int(cpus), float(mem), int(limit)


def plan_jobs(suite: str, backbones: Sequence[str] | None, *, profile: str, cache_dir: Path,
              gpus: int | None = None, timeout_min: int | None = None, resources: Resources | None = None,
              run_args: RunArgs | None = None, out: str | Path | None = None,
              say: Callable[[str], None] = logger.info) -> tuple[list[JobSpec], dict[str, str]]:  # fmt: skip
    """The jobs of a launch and the tasks left out (name -> why); resources per task (:func:`task_resources`).
    ``gpus`` / ``timeout_min``: shorthands for those fields of ``resources``."""
    resources = resources or Resources()
    if gpus is not None or timeout_min is not None:
        resources = replace(resources, **{k: v for k, v in (("gpus", gpus), ("timeout_min", timeout_min))
                                          if v is not None})  # fmt: skip
    run_args = run_args or RunArgs()
    registered = set(list_tasks())
    names = suite_tasks(suite)
    missing = {n: "not registered in this checkout" for n in names if n not in registered}
    specs = _backbone_specs(backbones, profile, cache_dir, say)
    measured: dict[str, float] = {}
    if out is not None:
        try:
            measured = expected_durations(load_records(out, missing_ok=True), profile)
        except ValueError:  # an unreadable record: no measured times, the defaults stand
            measured = {}
    jobs = []
    for name in (n for n in names if n in registered):
        task_gpus, cpus, mem, limit = task_resources(name, profile, run_args, resources, measured)
        jobs += [JobSpec(s.text, s.label, name, profile, task_gpus, limit, cpus, mem) for s in specs]
    return jobs, missing


# ------------------------------------------------------------------------------------------ the job itself
def _distributed_env() -> None:
    """torchrun's variables from submitit's job environment, when the job runs several tasks (one per GPU)."""
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (called directly, e.g. a requeued job run by hand)
        return
    if env.num_tasks <= 1:
        return
    port = 20000 + zlib.crc32(str(env.job_id).encode()) % 20000  # the same on every task of the job
    os.environ.update(RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks),
                      LOCAL_WORLD_SIZE=str(env.num_tasks // max(1, env.num_nodes)),
                      MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(port))  # fmt: skip


def _checkpointable_base():
    try:
        from submitit.helpers import Checkpointable
    except ImportError:  # the job class stays importable (and picklable) without submitit
        return object
    return Checkpointable


class BenchJob(_checkpointable_base()):
    """Run one (backbone, task) with the in-process runner; raise with the task's error when it failed.

    ``run_args``: the ``run`` flags (:class:`benchmarks.core.run_args.RunArgs` as JSON), resolved here, on the
    job's node, by the same code as an in-process run; ``place``: out and cache_dir."""

    def __call__(self, job: dict[str, Any], run_args: dict[str, Any], place: dict[str, str]) -> dict[str, Any]:
        from . import distributed as D
        from .runner import run_suite

        _distributed_env()
        threads, kwargs = RunArgs(**run_args).for_task(job["task"]).resolve(job["profile"])
        apply_threads(threads)
        kwargs = {**kwargs, "cache_dir": place["cache_dir"]}
        summary = run_suite(job["task"], [job["backbone"]], profile=job["profile"], out=place["out"], **kwargs)
        held = _held_pairs(summary, place["out"])
        distributed = D.is_distributed()  # the ranks would have to wait together: such a job fails at once
        if held and not distributed and _wait_for_claims(place["out"], held, HELD_WAIT_S):
            summary = run_suite(job["task"], [job["backbone"]], profile=job["profile"], out=place["out"],
                                **{**kwargs, "resume": True})  # fmt: skip
            held = _held_pairs(summary, place["out"])
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
        if held:
            raise RuntimeError("; ".join(f"[{e['backbone']}] {e['task']}: not run, {e['why']} (still after "
                                         f"{0 if distributed else HELD_WAIT_S:g} s); rerun with --resume once it "
                                         "ended" for e in held))  # fmt: skip
        if summary.failed:
            raise RuntimeError("; ".join(f"[{f['backbone']}] {f['task']}: {f['error']}" for f in summary.failed))
        if summary.not_available:
            raise RuntimeError("; ".join(f"{t}: not available ({why})" for t, why in summary.not_available.items()))
        return summary.to_json()

    def checkpoint(self, job: dict[str, Any], run_args: dict[str, Any], place: dict[str, str]):
        """Requeue on preemption or time-out with resume on: recorded pairs are skipped, trainings continue."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job, {**run_args, "resume": True}, place)


def _held_pairs(summary, out: str | Path) -> list[dict[str, Any]]:
    """The pairs ``summary`` skipped without a record of theirs in ``out``: another process held their claim
    (every other reason to skip, done or reused, leaves a record)."""
    from .results import is_failure

    if not summary.skipped:
        return []
    records = load_records(out, missing_ok=True)
    recorded = {(r.get("identity") or {}).get("key") for r in records if not is_failure(r)}
    return [e for e in summary.skipped if e.get("identity") not in recorded]


def _wait_for_claims(out: str | Path, held: list[dict[str, Any]], limit_s: float) -> bool:
    """True once no other process holds the claims of ``held`` (taken and released here), False after ``limit_s``."""
    from .job import pair_claim

    deadline = time.monotonic() + limit_s
    for entry in held:
        claim = pair_claim(out, entry["identity"])
        while not claim.acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(HELD_POLL_S)
        claim.release()
    return True


# --------------------------------------------------------------------------------------------- submitting
def launch_dir(out: str | Path) -> Path:
    return Path(out) / LAUNCH_DIR


def read_manifest(out: str | Path) -> list[dict[str, Any]]:
    path = launch_dir(out) / MANIFEST
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append_manifest(out: str | Path, entries: list[dict[str, Any]]) -> None:
    path = launch_dir(out) / MANIFEST
    old = path.read_text() if path.is_file() else ""
    atomic_write_text(path, old + "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def executor_parameters(launcher: str, job: JobSpec, *, partition: str | None = None,
                        slurm_params: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """submitit's ``update_parameters`` of ``job``: per task ``cpus_per_task``; ``mem_gb`` per node (the job's
    tasks together); GPUs only when the job asks for some (a CPU partition refuses any GPU request);
    ``slurm_params`` (``--slurm-param``) go to sbatch as submitit's ``additional_parameters`` (account, qos,
    constraint, ...)."""
    if launcher not in ("local", "slurm"):
        raise LaunchError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    params: dict[str, Any] = {"timeout_min": job.timeout_min, "tasks_per_node": job.tasks, "nodes": 1,
                              "name": f"sinder-{job.task}-{job.label}"}  # fmt: skip
    if job.gpus > 0:
        params["gpus_per_node"] = job.gpus
    if launcher == "slurm":
        params.update(slurm_signal_delay_s=120, cpus_per_task=job.cpus_per_task,  # 120 s: time to checkpoint
                      mem_gb=job.mem_gb * job.tasks)  # fmt: skip
        if partition:
            params["slurm_partition"] = partition
        if slurm_params:
            params["slurm_additional_parameters"] = dict(slurm_params)
    return params


def make_executor(launcher: str, folder: Path, job: JobSpec, *, partition: str | None = None,
                  slurm_params: dict[str, str] | None = None):  # fmt: skip
    import submitit

    params = executor_parameters(launcher, job, partition=partition, slurm_params=slurm_params)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=launcher)
    except RuntimeError as err:  # no srun here: not a SLURM login node
        raise LaunchError(f"--launcher {launcher}: {err}; --dry-run shows the request without a cluster") from err
    executor.update_parameters(**params)
    return executor


# submitit's generic parameter names -> sbatch's (submitit.slurm.SlurmExecutor._equivalence_dict).
_SBATCH_NAMES = {"name": "job_name", "timeout_min": "time", "mem_gb": "mem", "nodes": "nodes",
                 "cpus_per_task": "cpus_per_task", "gpus_per_node": "gpus_per_node",
                 "tasks_per_node": "ntasks_per_node"}  # fmt: skip


def request_text(launcher: str, folder: Path, job: JobSpec, *, partition: str | None = None,
                 slurm_params: dict[str, str] | None = None, seeds: Sequence[int] | None = None) -> str:  # fmt: skip
    """What ``--dry-run`` prints for ``job``: its resources and, for slurm, the ``#SBATCH`` lines submitit writes
    (its own ``_make_sbatch_string``, so no cluster is needed to see them); its seed with ``seeds`` (--seeds)."""
    head = (f"[{job.label}] {job.task}{_seed_text(job, seeds)}: {job.gpus} GPU(s), {job.tasks} task(s) x {job.cpus_per_task} CPU(s), "
            f"{job.mem_gb:g} GB per task, {job.timeout_min} min")  # fmt: skip
    if launcher != "slurm":
        return head
    from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

    params = executor_parameters(launcher, job, partition=partition, slurm_params=slurm_params)
    sbatch = {_SBATCH_NAMES.get(k, k.removeprefix("slurm_")): v for k, v in params.items()}
    sbatch["mem"] = _convert_mem(sbatch["mem"])
    text = _make_sbatch_string(command="<job>", folder=folder, **sbatch)
    return head + "\n" + "\n".join("  " + line for line in text.splitlines() if line.startswith("#SBATCH"))


def _seed_text(job: JobSpec, seeds: Sequence[int] | None) -> str:
    """`` (seed S)`` for a job of a ``--seeds`` launch, else nothing (one seed: the lines as before)."""
    return f" (seed {job.seed})" if seeds is not None else ""


def _submission_error(err: BaseException) -> str:
    """The line of a refused submission that says why (sbatch's ``error:`` line), else its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if "error" in line.lower()]
    return (said or lines or [type(err).__name__])[-1]


def _check_cfg_options(options: dict[str, Any], suite: str, profile: str) -> None:
    """``--cfg-options`` must name tasks of the suite and keys of their profiles: checked before submitting."""
    from .task_config import split_by_task

    names = suite_tasks(suite)
    try:
        for name, overrides in split_by_task(options).items():
            if name not in names:
                raise ValueError(f"--cfg-options {name}.{', '.join(overrides)}: suite {suite} has no task {name!r}")
            get_task(name).config(profile, overrides)
    except ValueError as err:
        raise LaunchError(str(err)) from err


def _check_run_args(run_args: RunArgs, jobs: list[JobSpec], profile: str) -> None:
    """What an in-process run refuses before any work, refused here before any submission (exit 2)."""
    from .runner import released_head_problems
    from .workers import requested_jobs

    try:
        run_args.resolve(profile)
        asked = requested_jobs(run_args.jobs)  # auto is 1 inside a job of several tasks (it runs under torchrun)
    except ValueError as err:
        raise LaunchError(str(err)) from err
    if isinstance(asked, int) and asked > 1 and any(j.tasks > 1 for j in jobs):
        raise LaunchError(f"--jobs {asked}: a job of several GPUs is distributed, where every rank works on the "
                          "same task; use --jobs 1")  # fmt: skip
    if run_args.head_weights:
        tasks = list(dict.fromkeys(j.task for j in jobs))
        specs = list({j.backbone: B.parse_backbone_spec(j.backbone) for j in jobs}.values())
        problems = released_head_problems([get_task(t) for t in tasks], specs, Path(run_args.head_weights).expanduser())
        if problems:
            raise LaunchError(f"{len(problems)} missing or invalid input(s): " + "; ".join(problems))


def launch(suite: str, backbones: Sequence[str] | None, *, launcher: str, profile: str = "paper",
           out: str | Path = "results/runs", cache_dir: str | Path | None = None, gpus: int | None = None,
           timeout_min: int | None = None, partition: str | None = None,
           slurm_params: dict[str, str] | None = None, resources: Resources | None = None,
           run_args: RunArgs | dict[str, Any] | None = None, dry_run: bool = False,
           seeds: Sequence[int] | None = None, say: Callable[[str], None] = logger.info) -> list:  # fmt: skip
    """Submit one job per (backbone, task) of ``suite``; returns the submitit jobs (in plan order).

    ``run_args``: the ``run`` flags every job resolves as an in-process run would (RunArgs, or a dict of its
    fields). Each job is recorded in ``<out>/launch/jobs.jsonl`` as soon as it is submitted; a refused submission
    is a LaunchError naming the jobs submitted before it. ``dry_run``: print each job's request, submit nothing.
    ``seeds`` (``run --seeds``): every job once per seed, seed by seed (else once, with ``run_args.seed``).
    """
    from .runner import default_cache_dir

    if isinstance(run_args, dict):
        run_args = RunArgs(**run_args)
    run_args = run_args or RunArgs()
    if launcher not in ("local", "slurm"):
        raise LaunchError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    _check_cfg_options(run_args.cfg_options or {}, suite, profile)
    try:  # the smoke twin's repair (in plan_jobs) runs with the run's threads, as in-process
        apply_threads(run_args.resolved_threads(profile))
    except ValueError as err:
        raise LaunchError(str(err)) from err
    jobs, missing = plan_jobs(suite, backbones, profile=profile, cache_dir=cache, gpus=gpus, timeout_min=timeout_min,
                              resources=resources, run_args=run_args, out=out, say=say)  # fmt: skip
    for name, why in missing.items():
        say(f"task {name}: not available ({why}); not submitted")
    _check_run_args(run_args, jobs, profile)
    if seeds is not None:
        jobs = [replace(job, seed=int(seed)) for seed in seeds for job in jobs]
    else:
        jobs = [replace(job, seed=run_args.seed) for job in jobs]
    folder = launch_dir(out) / "submitit"
    if dry_run:
        for job in jobs:
            say(request_text(launcher, folder, job, partition=partition, slurm_params=slurm_params, seeds=seeds))
        say(f"dry run: {len(jobs)} job(s) not submitted")
        return []
    place = {"out": str(out), "cache_dir": str(cache)}
    submitted: list = []
    for job in jobs:
        executor = make_executor(launcher, folder, job, partition=partition, slurm_params=slurm_params)
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr: it is in the error
                handle = executor.submit(BenchJob(), asdict(job), run_args.for_seed(job.seed).to_json(), place)
        except Exception as err:
            done = ", ".join(f"[{j.label}] {j.task} (job {h.job_id})" for j, h in zip(jobs, submitted))
            before = (f"submitted before it: {len(submitted)} of {len(jobs)} job(s) ({done}), recorded in "
                      f"{launch_dir(out) / MANIFEST} (sinder-bench status --out {out})" if submitted
                      else f"nothing submitted (0 of {len(jobs)} job(s))")  # fmt: skip
            raise LaunchError(f"{launcher} refused job [{job.label}] {job.task}: {_submission_error(err)}; "
                              f"{before}") from err  # fmt: skip
        submitted.append(handle)
        _append_manifest(out, [{**asdict(job), "job_id": str(handle.job_id), "launcher": launcher,
                                "folder": str(folder), "submitted": utc_now()}])  # fmt: skip
        say(f"[{job.label}] {job.task}{_seed_text(job, seeds)}: submitted job {handle.job_id} ({launcher}, {job.gpus} GPU(s), "
            f"{job.cpus_per_task} CPU(s) per task, {job.mem_gb:g} GB per task, {job.timeout_min} min)")  # fmt: skip
    return submitted


# ----------------------------------------------------------------------------------------------- status
def _job_paths(entry: dict[str, Any]):
    from submitit.core.utils import JobPaths

    return JobPaths(entry["folder"], job_id=entry["job_id"], task_id=0)


def _last_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else str(text)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# SLURM job states (sacct / squeue long names, https://slurm.schedmd.com/squeue.html#SECTION_JOB-STATE-CODES and
# https://slurm.schedmd.com/sacct.html#SECTION_JOB-STATE-CODES) -> (status state, what it means). sacct writes
# "CANCELLED by <uid>" and truncates with a "+" ("CANCELLED+"); squeue -o %t writes the short codes.
SLURM_STATES: dict[str, tuple[str, str]] = {
    "PENDING": ("pending", "waiting for resources"), "CONFIGURING": ("pending", "nodes booting"),
    "REQUEUED": ("pending", "requeued (preempted or timed out; it resumes from its checkpoint)"),
    "REQUEUE_HOLD": ("pending", "requeued and held"), "REQUEUE_FED": ("pending", "requeued by the federation"),
    "RESV_DEL_HOLD": ("pending", "held (its reservation was deleted)"),
    "RUNNING": ("running", "running"), "COMPLETING": ("running", "finishing"),
    "SIGNALING": ("running", "being signalled"), "STAGE_OUT": ("running", "staging out"),
    "RESIZING": ("running", "resizing"), "SUSPENDED": ("running", "suspended (it holds its allocation)"),
    "STOPPED": ("running", "stopped (SIGSTOP; it holds its allocation)"),
    "COMPLETED": ("failed", "ended with exit 0 but wrote no result"),
    "CANCELLED": ("cancelled", "cancelled (scancel or an administrator); rerun with --resume"),
    "REVOKED": ("cancelled", "revoked by the federation"),
    "FAILED": ("failed", "failed (non-zero exit)"),
    "TIMEOUT": ("failed", "time limit reached; rerun with --resume and a longer --timeout-min"),
    "DEADLINE": ("failed", "deadline reached"),
    "OUT_OF_MEMORY": ("failed", "out of memory; rerun with --resume and a larger --mem-gb"),
    "NODE_FAIL": ("failed", "its node failed; rerun with --resume"),
    "BOOT_FAIL": ("failed", "its node failed to boot; rerun with --resume"),
    "PREEMPTED": ("failed", "preempted and not requeued; rerun with --resume"),
    "SPECIAL_EXIT": ("failed", "special exit (held by SLURM after a failure)"),
}  # fmt: skip
SQUEUE_CODES = {"PD": "PENDING", "CF": "CONFIGURING", "RQ": "REQUEUED", "RH": "REQUEUE_HOLD", "RF": "REQUEUE_FED",
                "RD": "RESV_DEL_HOLD", "R": "RUNNING", "CG": "COMPLETING", "SI": "SIGNALING", "SO": "STAGE_OUT",
                "RS": "RESIZING", "S": "SUSPENDED", "ST": "STOPPED", "CD": "COMPLETED", "CA": "CANCELLED",
                "RV": "REVOKED", "F": "FAILED", "TO": "TIMEOUT", "DL": "DEADLINE", "OOM": "OUT_OF_MEMORY",
                "NF": "NODE_FAIL", "BF": "BOOT_FAIL", "PR": "PREEMPTED", "SE": "SPECIAL_EXIT"}  # fmt: skip
# What slurmstepd writes into a killed job's stderr ("*** JOB 12 ON node CANCELLED AT 2026-... DUE TO TIME LIMIT ***").
_STEPD_KILL = re.compile(r"\*\*\* (?:JOB|STEP) [\d._]+ ON \S+ CANCELLED AT \S+(?: DUE TO ([A-Z ]+?))?(?: \*\*\*|$)")
_STEPD_REASONS = {"TIME LIMIT": "TIMEOUT", "PREEMPTION": "PREEMPTED", "NODE FAILURE": "NODE_FAIL"}


def slurm_state(text: str) -> tuple[str, str] | None:
    """(status state, meaning) of a SLURM state as sacct or squeue prints it ("CANCELLED by 0", "CANCELLED+",
    "OUT_OF_MEMORY", "PD"); None when empty. An unheard-of state is "unknown", never "running"."""
    word = str(text).strip().split()[0].rstrip("+").upper() if str(text).strip() else ""
    if not word:
        return None
    word = SQUEUE_CODES.get(word, word)
    state, meaning = SLURM_STATES.get(word, ("unknown", "a state this version does not know"))
    return state, f"{meaning} [{word}]" if word not in meaning else meaning


def _slurm_query(command: list[str]) -> str | None:
    """stdout of a SLURM client command; None when it is not installed or fails (slurmdbd down, unknown job)."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode == 0:
        return done.stdout
    return "" if "invalid job id" in done.stderr.lower() else None  # squeue: the job left the queue


def _stderr_verdict(paths) -> str | None:
    """The SLURM state a dead job's own stderr says (slurmstepd's kill line, the OOM killer), else None."""
    try:
        text = paths.stderr.read_text(errors="replace")[-20000:]
    except OSError:
        return None
    if "oom-kill" in text or "Out Of Memory" in text or "out-of-memory" in text:
        return "OUT_OF_MEMORY"
    found = _STEPD_KILL.findall(text)
    if found:
        return _STEPD_REASONS.get(found[-1].strip(), "CANCELLED")
    return None


def _slurm_job_state(entry: dict[str, Any], paths) -> tuple[str, str]:
    """A SLURM job without a result file: sacct's state, else squeue's, else (the job left the queue) what its
    stderr says, else failed; "unknown" when neither sacct nor squeue answers. Never "running" on no evidence."""
    job_id = str(entry["job_id"])
    where = f"job {job_id}: "
    sacct = _slurm_query(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"])
    lines = [line for line in (sacct or "").splitlines() if line.strip()]
    if lines:  # the allocation's latest line (a requeued job has one per start with --duplicates only)
        state, meaning = slurm_state(lines[-1]) or ("unknown", "")
        return state, f"{where}{meaning} (sacct {lines[-1].strip()!r}), log {paths.stderr}"
    squeue = _slurm_query(["squeue", "-h", "-j", job_id, "-o", "%T"])
    if squeue is not None and squeue.strip():
        state, meaning = slurm_state(squeue) or ("unknown", "")
        return state, f"{where}{meaning} (squeue), log {paths.stderr}"
    if squeue is None:
        return "unknown", f"{where}neither sacct nor squeue answers here; see {paths.stderr}"
    # Not in the queue any more (squeue printed nothing or refused the id) and no result file: it ended.
    said = _stderr_verdict(paths)
    if said:
        state, meaning = slurm_state(said) or ("failed", "")
        return state, f"{where}{meaning} (from its log {paths.stderr}; no sacct)"
    return "failed", f"{where}left the queue without a result; see {paths.stderr}"


def job_state(entry: dict[str, Any]) -> tuple[str, str]:
    """(state, detail) of a submitted job: done or failed from its result file when there is one, else from
    SLURM (:func:`_slurm_job_state`) or, for a local job, its process."""
    from submitit.core.utils import pickle_load

    paths = _job_paths(entry)
    if paths.result_pickle.exists():
        try:
            outcome, value = pickle_load(paths.result_pickle)
        except Exception as err:  # a half-written pickle of a killed job
            return "failed", f"job {entry['job_id']}: unreadable result ({type(err).__name__}: {err})"
        if outcome == "success":
            return "done", f"job {entry['job_id']}"
        return "failed", f"job {entry['job_id']}: {_last_line(value)}"
    if entry.get("launcher") == "slurm":
        return _slurm_job_state(entry, paths)
    if paths.stdout.exists() or paths.stderr.exists():
        if not _pid_alive(entry["job_id"]):  # a local job id is its pid
            return "failed", f"job {entry['job_id']}: process ended without a result (killed?), see {paths.stderr}"
        return "running", f"job {entry['job_id']}, log {paths.stdout}"
    if not _pid_alive(entry["job_id"]):
        return "failed", f"job {entry['job_id']}: process ended before it started (no log), see {paths.folder}"
    return "pending", f"job {entry['job_id']}"


def status_rows(out: str | Path) -> list[dict[str, Any]]:
    """One row per (backbone, task, profile, seed) seen in the records or the launch manifest, with its state."""
    rows: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for entry in read_manifest(out):  # later submissions of a pair replace earlier ones
        key = (entry["label"], entry["task"], entry["profile"], int(entry.get("seed", 0)))
        state, detail = job_state(entry)
        rows[key] = {"backbone": key[0], "task": key[1], "profile": key[2], "seed": key[3], "state": state,
                     "detail": detail}  # fmt: skip
    for record in load_records(out, missing_ok=True):
        key = (record["backbone"]["label"], record["task"], record["profile"], int(record.get("seed", 0)))
        rows[key] = {"backbone": key[0], "task": key[1], "profile": key[2], "seed": key[3], "state": "done",
                     "detail": record["_path"]}  # fmt: skip
    return [rows[k] for k in sorted(rows)]


def format_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no records and no launched jobs"
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    counts = {s: n for s, n in counts.items() if n or s in STATES[:4]}
    columns = ["backbone", "task", "profile", "state"]
    if len({r.get("seed", 0) for r in rows}) > 1:  # records of several seeds (run --seeds): a row per seed
        columns.insert(3, "seed")
    width = {k: max(len(k), *(len(str(r.get(k, 0))) for r in rows)) for k in columns}
    head = "  ".join(k.ljust(width[k]) for k in width) + "  detail"
    lines = [head] + ["  ".join(str(r.get(k, 0)).ljust(width[k]) for k in width) + "  " + r["detail"] for r in rows]
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI
def _parse_slurm_params(items: Sequence[str] | None) -> dict[str, str]:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. account=myproject")
        params[key] = value
    return params


def register(subparsers) -> None:
    """Adds the launcher flags to ``run`` (registered before, by benchmarks.core.commands) and the ``status`` verb."""
    from sinder.cli.common import out_parent

    from .commands import RUNS_HELP

    run = subparsers.choices.get("run")
    if run is not None:
        group = run.add_argument_group(
            "cluster launch (one submitit job per (backbone, task))",
            "Each job asks for its task's resources: the flag when given, else the task config's launch entry, "
            "else GPUs 0 for profile smoke (runs on a CPU partition) and 1 for paper, CPUs per task = DataLoader "
            "workers + 1, memory 4 GB smoke / 64 GB paper per task, time from the task's recorded times in --out "
            "(3x + 10 min), else 30 min smoke / 24 h paper. --dry-run prints the request.",
        )  # fmt: skip
        group.add_argument("--launcher", choices=LAUNCHERS, default="inprocess",
                           help="inprocess (default): this process; local: submitit local jobs; slurm: Slurm jobs")
        group.add_argument("--gpus", "--slurm-gpus", dest="gpus", type=int, default=None,
                           help="GPUs per job; N > 1 runs N ranks (default: 0 smoke, 1 paper)")
        group.add_argument("--timeout-min", "--slurm-timeout-min", dest="timeout_min", type=int, default=None,
                           help="time limit per job in minutes")
        group.add_argument("--cpus-per-task", "--slurm-cpus-per-task", dest="cpus_per_task", type=int, default=None,
                           help="CPUs per task (default: DataLoader workers + 1)")
        group.add_argument("--mem-gb", "--slurm-mem-gb", dest="mem_gb", type=float, default=None,
                           help="memory per task in GB (default: 4 smoke, 64 paper)")
        group.add_argument("--partition", "--slurm-partition", dest="partition", default=None, help="Slurm partition")
        group.add_argument("--slurm-param", action="append", default=None, metavar="KEY=VALUE",
                           help="extra sbatch parameter (submitit's additional_parameters), repeatable: site "
                           "specifics such as account=myproject, qos=high, constraint=a100")  # fmt: skip
        group.add_argument("--dry-run", action="store_true",
                           help="print each job's request (the #SBATCH lines for slurm) and submit nothing")
        group.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print their states")
        in_process = run.get_default("func")
        run.set_defaults(func=lambda args: _cmd_run(args, in_process))  # fmt: skip

    status = subparsers.add_parser(
        "status", help="done / running / failed / pending for each (backbone, task) of a records folder",
        description="Read the run records in --out and the launcher's job files (<out>/launch/) and show each "
        "(backbone, task): done, running, failed (with its error), pending, cancelled, or unknown (SLURM did not "
        "answer). A SLURM job's state comes from sacct, else squeue, else its own result and log files.",
        parents=[out_parent(RUNS_HELP, default="results/runs")],
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="print the rows as JSON")
    status.set_defaults(func=_cmd_status)


def _cmd_run(args: argparse.Namespace, in_process: Callable[[argparse.Namespace], int]) -> int:
    from .commands import seeds_of

    seeds = seeds_of(args)  # a bad --seeds: one line, before anything
    if args.launcher == "inprocess":
        if args.dry_run:
            raise LaunchError("--dry-run prints the jobs of --launcher local or slurm; add one of them")
        return in_process(args)
    resources = Resources(gpus=args.gpus, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                          timeout_min=args.timeout_min)  # fmt: skip
    # A LaunchError (a ValueError: bad flag, unknown suite, refused submission) reaches the CLI's main: exit 2.
    jobs = launch(args.suite, args.backbone, launcher=args.launcher, profile=args.profile, out=args.out,
                  cache_dir=args.cache_dir, partition=args.partition,
                  slurm_params=_parse_slurm_params(args.slurm_param), resources=resources,
                  run_args=RunArgs.from_namespace(args), dry_run=args.dry_run, seeds=seeds, say=print)  # fmt: skip
    if args.dry_run:
        return 0
    if args.launcher == "slurm" and not args.wait:
        print(f"{len(jobs)} job(s) submitted; follow them with: sinder-bench status --out {args.out}")
        return 0
    failed = wait_all(jobs, say=print)
    print(format_status(status_rows(args.out)))
    return 1 if failed else 0


def wait_all(jobs: list, poll_s: float = 1.0, say: Callable[[str], None] = logger.info) -> int:
    """Wait for every job; returns how many failed, and says each one's outcome. A job of several tasks (one
    per GPU) succeeded when every task did (submitit's ``results()``; ``result()`` refuses such jobs)."""
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)
    failed = 0
    for job in jobs:
        try:
            outcomes = job.results()
        except Exception as err:
            failed += 1
            say(f"job {job.job_id}: failed: {_last_line(str(err))}")
            continue
        say(f"job {job.job_id}: done ({len(outcomes)} task(s))")
    return failed


def _cmd_status(args: argparse.Namespace) -> int:
    rows = status_rows(args.out)
    print(json.dumps(rows, indent=2) if args.json else format_status(rows))
    return 0
