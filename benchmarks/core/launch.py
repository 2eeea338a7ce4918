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

Bookkeeping lives in ``<out>/launch/``: ``jobs.jsonl`` (one line per submitted job: backbone, task, profile,
job id, submitit folder) and ``submitit/`` (submitit's pickles and logs). No ``.json`` file goes there, so the
folder of run records stays readable by ``report`` and ``compare``. ``sinder-bench status --out DIR`` reads the
records and these files: done / running / failed (with the error) / pending for each (backbone, task).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sinder.utils.atomic import atomic_write_text

from . import backbones as B
from .registry import get_suite, get_task, list_tasks
from .results import load_records, utc_now
from .task_config import default_loader_workers

LAUNCHERS = ("inprocess", "local", "slurm")
LAUNCH_DIR = "launch"
MANIFEST = "jobs.jsonl"
# Time limit of a job when neither --timeout-min nor the task's config (``launch: {timeout_min: ...}``) sets one.
DEFAULT_TIMEOUT_MIN = {"smoke": 30, "paper": 24 * 60}


logger = logging.getLogger(__name__)
  # the default line printer (`say`/`log`): the CLI shows INFO on stdout

class LaunchError(ValueError):
    """A launch cannot start (bad flag, unknown suite); the message names the input and the fix."""


@dataclass(frozen=True)
class JobSpec:
    """One (backbone, task) job and the resources it asks for."""

    backbone: str  # the --backbone spec text the job passes to run_suite
    label: str
    task: str
    profile: str
    gpus: int
    timeout_min: int


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
    # The smoke defaults, resolved here once (the twin's repair too) so every job gets explicit specs.
    specs = B.smoke_specs()
    twin = B.repaired_twin(specs[0], cache_dir, say)
    return specs + ([twin] if twin is not None else [])


def plan_jobs(suite: str, backbones: Sequence[str] | None, *, profile: str, cache_dir: Path,
              gpus: int | None = None, timeout_min: int | None = None,
              say: Callable[[str], None] = logger.info) -> tuple[list[JobSpec], dict[str, str]]:  # fmt: skip
    """The jobs of a launch and the tasks left out (name -> why). GPUs and time limit: the flag when given,
    else the task config's ``launch`` entry, else 1 GPU and :data:`DEFAULT_TIMEOUT_MIN`."""
    registered = set(list_tasks())
    names = suite_tasks(suite)
    missing = {n: "not registered in this checkout" for n in names if n not in registered}
    specs = _backbone_specs(backbones, profile, cache_dir, say)
    jobs = []
    for name in (n for n in names if n in registered):
        try:
            launch = dict(get_task(name).config(profile).get("launch") or {})
        except ValueError as err:
            raise LaunchError(str(err)) from err
        task_gpus = int(gpus if gpus is not None else launch.get("gpus", 1))
        limit = int(timeout_min if timeout_min is not None else launch.get("timeout_min", DEFAULT_TIMEOUT_MIN[profile]))
        jobs += [JobSpec(s.text, s.label, name, profile, task_gpus, limit) for s in specs]
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
    """Run one (backbone, task) with the in-process runner; raise with the task's error when it failed."""

    def __call__(self, job: dict[str, Any], run_kwargs: dict[str, Any]) -> dict[str, Any]:
        from . import distributed as D
        from .runner import run_suite

        _distributed_env()
        options = {k: v for k, v in (run_kwargs.get("cfg_options") or {}).items()  # this job's task only
                   if k.partition(".")[0] == job["task"]}
        summary = run_suite(job["task"], [job["backbone"]], profile=job["profile"],
                            **{**run_kwargs, "cfg_options": options})
        if D.is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()
        if summary.failed:
            raise RuntimeError("; ".join(f"[{f['backbone']}] {f['task']}: {f['error']}" for f in summary.failed))
        if summary.not_available:
            raise RuntimeError("; ".join(f"{t}: not available ({why})" for t, why in summary.not_available.items()))
        return summary.to_json()

    def checkpoint(self, job: dict[str, Any], run_kwargs: dict[str, Any]):
        """Requeue on preemption or time-out with resume on: recorded pairs are skipped, trainings continue."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job, {**run_kwargs, "resume": True})


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


def make_executor(launcher: str, folder: Path, job: JobSpec, *, partition: str | None = None,
                  slurm_params: dict[str, str] | None = None, cpus_per_task: int | None = None):  # fmt: skip
    import submitit

    if launcher not in ("local", "slurm"):
        raise LaunchError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    executor = submitit.AutoExecutor(folder=folder, cluster=launcher)
    tasks = max(1, job.gpus)  # one process per GPU, torchrun style
    params: dict[str, Any] = {"timeout_min": job.timeout_min, "gpus_per_node": job.gpus, "tasks_per_node": tasks,
                              "nodes": 1, "name": f"sinder-{job.task}-{job.label}"}  # fmt: skip
    if launcher == "slurm":
        params["slurm_signal_delay_s"] = 120  # time to write a checkpoint before the kill
        if partition:
            params["slurm_partition"] = partition
        if slurm_params:
            params["slurm_additional_parameters"] = dict(slurm_params)
        if cpus_per_task:
            params["cpus_per_task"] = cpus_per_task
    executor.update_parameters(**params)
    return executor


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


def launch(suite: str, backbones: Sequence[str] | None, *, launcher: str, profile: str = "paper",
           out: str | Path = "results/runs", cache_dir: str | Path | None = None, gpus: int | None = None,
           timeout_min: int | None = None, partition: str | None = None,
           slurm_params: dict[str, str] | None = None, cpus_per_task: int | None = None,
           run_kwargs: dict[str, Any] | None = None, say: Callable[[str], None] = logger.info) -> list:  # fmt: skip
    """Submit one job per (backbone, task) of ``suite``; returns the submitit jobs (in plan order).

    ``run_kwargs`` go to ``run_suite`` in every job (data_root, resume, device, seed, num_workers, progress).
    """
    from .runner import default_cache_dir

    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    jobs, missing = plan_jobs(suite, backbones, profile=profile, cache_dir=cache, gpus=gpus,
                              timeout_min=timeout_min, say=say)  # fmt: skip
    for name, why in missing.items():
        say(f"task {name}: not available ({why}); not submitted")
    _check_cfg_options((run_kwargs or {}).get("cfg_options") or {}, suite, profile)
    kwargs = {**(run_kwargs or {}), "out": str(out), "cache_dir": str(cache)}
    folder = launch_dir(out) / "submitit"
    submitted, entries = [], []
    for job in jobs:
        executor = make_executor(launcher, folder, job, partition=partition, slurm_params=slurm_params,
                                 cpus_per_task=cpus_per_task)  # fmt: skip
        handle = executor.submit(BenchJob(), asdict(job), kwargs)
        submitted.append(handle)
        entries.append({**asdict(job), "job_id": str(handle.job_id), "launcher": launcher, "folder": str(folder),
                        "submitted": utc_now()})  # fmt: skip
        say(f"[{job.label}] {job.task}: submitted job {handle.job_id} ({launcher}, {job.gpus} GPU(s), "
            f"{job.timeout_min} min)")  # fmt: skip
    _append_manifest(out, entries)
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


def job_state(entry: dict[str, Any]) -> tuple[str, str]:
    """(state, detail) of a submitted job from submitit's files: done, failed, running or pending."""
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
        try:
            import submitit

            state = submitit.SlurmJob(entry["folder"], entry["job_id"]).state  # sacct; UNKNOWN without it
        except Exception:
            state = "UNKNOWN"
        if state in ("PENDING", "REQUEUED", "CONFIGURING"):
            return "pending", f"job {entry['job_id']} ({state})"
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"):
            return "failed", f"job {entry['job_id']}: slurm state {state}, see {paths.stderr}"
        if state in ("RUNNING", "COMPLETING"):
            return "running", f"job {entry['job_id']}"
    if paths.stdout.exists() or paths.stderr.exists():
        if entry.get("launcher") == "local" and not _pid_alive(entry["job_id"]):  # a local job id is its pid
            return "failed", f"job {entry['job_id']}: process ended without a result (killed?), see {paths.stderr}"
        return "running", f"job {entry['job_id']}, log {paths.stdout}"
    return "pending", f"job {entry['job_id']}"


def status_rows(out: str | Path) -> list[dict[str, str]]:
    """One row per (backbone, task, profile) seen in the records or the launch manifest, with its state."""
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for entry in read_manifest(out):  # later submissions of a pair replace earlier ones
        key = (entry["label"], entry["task"], entry["profile"])
        state, detail = job_state(entry)
        rows[key] = {"backbone": key[0], "task": key[1], "profile": key[2], "state": state, "detail": detail}
    for record in load_records(out, missing_ok=True):
        key = (record["backbone"]["label"], record["task"], record["profile"])
        rows[key] = {"backbone": key[0], "task": key[1], "profile": key[2], "state": "done",
                     "detail": record["_path"]}  # fmt: skip
    return [rows[k] for k in sorted(rows)]


def format_status(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "no records and no launched jobs"
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "failed", "pending")}
    width = {k: max(len(k), *(len(r[k]) for r in rows)) for k in ("backbone", "task", "profile", "state")}
    head = "  ".join(k.ljust(width[k]) for k in width) + "  detail"
    lines = [head] + ["  ".join(r[k].ljust(width[k]) for k in width) + "  " + r["detail"] for r in rows]
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
        group = run.add_argument_group("cluster launch (one submitit job per (backbone, task))")
        group.add_argument("--launcher", choices=LAUNCHERS, default="inprocess",
                           help="inprocess (default): this process; local: submitit local jobs; slurm: Slurm jobs")
        group.add_argument("--gpus", type=int, default=None,
                           help="GPUs per job (default: the task config's launch.gpus, else 1); N > 1 runs N ranks")
        group.add_argument("--timeout-min", type=int, default=None,
                           help="time limit per job in minutes (default: the task config's, else 30 smoke / 1440)")
        group.add_argument("--partition", default=None, help="Slurm partition")
        group.add_argument("--cpus-per-task", type=int, default=None, help="Slurm CPUs per task")
        group.add_argument("--slurm-param", action="append", default=None, metavar="KEY=VALUE",
                           help="extra sbatch parameter, repeatable (e.g. account=myproject, qos=high)")
        group.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print their states")
        in_process = run.get_default("func")
        run.set_defaults(func=lambda args: _cmd_run(args, in_process))  # fmt: skip

    status = subparsers.add_parser(
        "status", help="done / running / failed / pending for each (backbone, task) of a records folder",
        description="Read the run records in --out and the launcher's job files (<out>/launch/) and show each "
        "(backbone, task): done, running, failed (with its error) or pending.",
        parents=[out_parent(RUNS_HELP, default="results/runs")],
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="print the rows as JSON")
    status.set_defaults(func=_cmd_status)


def _cmd_run(args: argparse.Namespace, in_process: Callable[[argparse.Namespace], int]) -> int:
    if args.launcher == "inprocess":
        return in_process(args)
    workers = args.num_workers
    if workers is None:  # the jobs' machines: their CPUs are known only as --cpus-per-task
        workers = default_loader_workers(args.profile, args.cpus_per_task)
    run_kwargs = {"data_root": args.data_root, "resume": args.resume, "device": args.device, "seed": args.seed,
                  "num_workers": workers, "progress": False, "cfg_options": args.cfg_options,
                  "tensorboard_dir": getattr(args, "tensorboard", None)}  # fmt: skip
    # A LaunchError (a ValueError: bad flag, unknown suite) reaches the CLI's main: exit 2.
    jobs = launch(args.suite, args.backbone, launcher=args.launcher, profile=args.profile, out=args.out,
                  cache_dir=args.cache_dir, gpus=args.gpus, timeout_min=args.timeout_min,
                  partition=args.partition, slurm_params=_parse_slurm_params(args.slurm_param),
                  cpus_per_task=args.cpus_per_task, run_kwargs=run_kwargs)  # fmt: skip
    if args.launcher == "slurm" and not args.wait:
        print(f"{len(jobs)} job(s) submitted; follow them with: sinder-bench status --out {args.out}")
        return 0
    failed = wait_all(jobs)
    print(format_status(status_rows(args.out)))
    return 1 if failed else 0


def wait_all(jobs: list, poll_s: float = 1.0) -> int:
    """Wait for every job; returns how many failed (their errors show in ``status``)."""
    while not all(job.done() for job in jobs):
        time.sleep(poll_s)
    failed = 0
    for job in jobs:
        try:
            job.result()
        except Exception:
            failed += 1
    return failed


def _cmd_status(args: argparse.Namespace) -> int:
    rows = status_rows(args.out)
    print(json.dumps(rows, indent=2) if args.json else format_status(rows))
    return 0
