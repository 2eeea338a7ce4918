"""Run a suite's (backbone, task) pairs N at once in N worker processes (``sinder-bench run --jobs N``).

The workers are started once ('spawn': forking a process whose torch already runs threads can deadlock), each
imports torch once and sets the parent's number of intra-op threads, then takes pairs from the parent one at a
time, longest expected first, and runs each as the in-process runner does (``job.Job.run_task``): the same
claims, resume logic and records as ``--jobs 1``. A worker keeps the last backbone it loaded for the next pair
of the same backbone. Workers run without progress bars and hand their lines back; the parent prints a
``[k/N started ...]`` line as it hands a pair to a worker and one ``[k/N ...]`` line per finished pair. A task that raises gets its failure record as in-process; a
worker that dies (killed, out of memory) fails the pair it ran and is replaced. On Ctrl-C the parent stops the
workers (records are written atomically: none is half-written) and says which pairs did not finish.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from . import backbones as B
from .job import Job, RunSummary

AUTO = "auto"
JOBS_ENV = "SINDER_BENCH_JOBS"  # the default of --jobs (the tests set 1: they patch tasks in their own process)
MAX_AUTO_JOBS = 2  # the smoke suite's tiny models: more processes than this mostly add import time and memory
POLL_S = 1.0  # how often the parent looks for a dead worker while it waits

# Smoke-profile seconds per task, measured: the --jobs 1 baseline of benchmarks/perf/smoke_suite.py (one thread,
# an idle 2-core x86_64 machine, mean of the two backbones; results/perf/smoke_suite.json of 2026-11-30). The order of
# a run without earlier records of its own (longest first), and its time estimate (smoke_expected: scaled by cores).
SMOKE_SECONDS = {
    "stego_cityscapes": 16.0, "ablation_constraints": 15.7, "ablation_thresholds": 15.0, "depth_nyu_linear4": 14.0,
    "seg_ade20k_multiscale": 12.4, "stego_potsdam": 11.6, "seg_ade20k_linear": 10.5, "depth_nyu_dpt": 9.8,
    "depth_nyu_linear1": 9.4, "cause_voc": 8.3, "seg_voc_multiscale": 5.5, "cause_cityscapes": 4.2,
    "seg_voc_linear": 2.4, "imagenet_linear": 1.2, "imagenet_knn": 0.1,
}  # fmt: skip
SMOKE_SECONDS_CORES = 2  # the cores of the machine that measured SMOKE_SECONDS (one process, one thread)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def under_torchrun() -> bool:
    from . import distributed as D

    return D.is_distributed() or int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def distributed_refusal(jobs: int) -> str:
    return (f"--jobs {jobs}: this run is distributed (torchrun, WORLD_SIZE={os.environ.get('WORLD_SIZE', '?')}), "
            "where every rank works on the same task; run the pairs one at a time: --jobs 1")  # fmt: skip


def parse_jobs(text: str, what: str = "--jobs") -> int | str:
    """``--jobs`` value: ``auto`` or a whole number >= 1 (argparse type; ValueError names the fix)."""
    if str(text).strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{what} {text!r}: give a number of processes >= 1, or auto")
    return value


def requested_jobs(flag: int | str | None) -> int | str:
    """The ``--jobs`` flag when given, else ``$SINDER_BENCH_JOBS``, else auto."""
    if flag is not None:
        return flag
    return parse_jobs(os.environ.get(JOBS_ENV) or AUTO, what=f"${JOBS_ENV}")


def resolve_jobs(jobs: int | str, profile: str, threads: int | None, cores: int | None = None) -> int:
    """How many pairs run at once. ``auto``: min(2, cores // threads) for profile smoke outside torchrun, else 1
    (a paper run on one GPU must not train two large models at once); a number stands as given."""
    if jobs != AUTO:
        return int(jobs)
    if profile != "smoke" or under_torchrun():
        return 1
    cores = available_cores() if cores is None else cores
    return max(1, min(MAX_AUTO_JOBS, cores // max(1, threads or 1)))


def smoke_expected(expected: dict[str, float], profile: str, jobs: int, threads: int | None,
                   cores: int | None = None) -> dict[str, float]:
    """Expected seconds per task for the progress estimate: the earlier records' times (``expected``) where there
    are some, else, for profile smoke, the measured table above scaled by cores: ``jobs`` processes of ``threads``
    threads on ``cores`` cores each run slower by the factor they oversubscribe the cores (no faster for more
    cores: one thread per task). Another profile gets the records' times only."""
    if profile != "smoke":
        return dict(expected)
    cores = available_cores() if cores is None else cores
    factor = max(1.0, max(1, jobs) * max(1, threads or 1) / max(1, cores))
    return {**{name: seconds * factor for name, seconds in SMOKE_SECONDS.items()}, **expected}


def order_pairs(pairs: Sequence[tuple], expected: dict[str, float], profile: str) -> list[tuple]:
    """(index, spec, task) pairs, the longest expected first: an earlier record's median time, else the smoke
    table above, else first of all (never timed: it may be the longest). Ties keep the plan's order."""

    def cost(pair) -> float:
        name = pair[2].name
        if name in expected:
            return expected[name]
        if profile == "smoke" and name in SMOKE_SECONDS:
            return float(SMOKE_SECONDS[name])
        return math.inf

    return sorted(pairs, key=cost, reverse=True)


# ------------------------------------------------------------------------------------------------ parent
@dataclass
class _Slot:
    process: Any
    inbox: Any
    busy: tuple | None = None  # the (index, spec, task) it runs


def run_in_workers(job, plan, resume: bool, jobs: int, expected: dict[str, float]) -> None:
    """Run every (spec, task) of ``plan`` on ``jobs`` worker processes; outcomes go into ``job.summary``."""
    import torch

    pairs = [(i, spec, task) for i, (spec, task) in enumerate((s, t) for s, ts in plan for t in ts)]
    payloads = {}
    for _, _, task in pairs:  # the task object travels to the worker, so a task registered at run time works too
        try:
            payloads[task.name] = pickle.dumps(task)
        except Exception as err:
            raise ValueError(f"task {task.name} cannot be sent to a worker process ({type(err).__name__}: {err}): "
                             "define its class at module level, or run with jobs=1") from err  # fmt: skip
    todo = deque(order_pairs(pairs, expected, job.profile))
    settings = {f.name: getattr(job, f.name) for f in fields(job)
                if f.name not in ("store", "summary", "say", "tracker", "on_outcome")}  # fmt: skip
    settings.update(progress=False, out=str(job.store.root), threads=torch.get_num_threads(),
                    start_method=mp.get_start_method())  # fmt: skip
    context = mp.get_context("spawn")
    results = context.Queue()
    slots: list[_Slot] = []
    started = [0]  # pairs handed to a worker so far

    def start(number: int) -> _Slot:
        inbox = context.Queue()
        process = context.Process(target=worker_main, args=(settings, number, inbox, results),
                                  name=f"sinder-bench-worker-{number}")  # fmt: skip
        process.start()
        return _Slot(process, inbox)

    def feed(slot: _Slot) -> None:
        slot.busy = todo.popleft() if todo else None
        if slot.busy is not None:
            index, spec, task = slot.busy
            if job.tracker is not None:
                job.tracker.started(task.name)
                started[0] += 1
                job.say(f"{job.tracker.prefix(started[0], 'started')} {spec.label} {task.name} ...")
            else:
                job.say(f"{spec.label} {task.name} ...")
            slot.inbox.put({"index": index, "spec": spec, "task": task.name, "payload": payloads[task.name],
                            "resume": resume})  # fmt: skip

    job.say(f"running {len(pairs)} (backbone, task) pairs in {min(jobs, len(pairs))} worker processes "
            f"({settings['threads']} torch thread(s) each)")  # fmt: skip
    try:
        for number in range(min(jobs, len(pairs))):
            slots.append(start(number))
            feed(slots[-1])
        while any(s.busy for s in slots):
            answer = _next_answer(results)
            if answer is None:
                dead = [n for n, s in enumerate(slots) if s.busy and not s.process.is_alive()]
                answer = _next_answer(results) if dead else None  # one sent just before its worker ended
                if answer is None:
                    for number in dead:
                        _finish(job, slots[number].busy, _died(slots[number]))
                        slots[number] = start(number) if todo else _Slot(None, None)  # a fresh worker goes on
                        feed(slots[number])
                    continue
            number, result = answer
            slot = slots[number]
            if slot.busy is None or slot.busy[0] != result["index"]:
                continue  # a late answer of a worker already counted as dead
            _finish(job, slot.busy, result)
            feed(slot)
    except KeyboardInterrupt:
        left = [p for p in [s.busy for s in slots] + list(todo) if p]
        job.say(f"interrupted: {len(left)} pair(s) did not finish (records are written whole or not at all): "
                + ", ".join(f"[{spec.label}] {task.name}" for _, spec, task in sorted(left, key=lambda p: p[0])))
        raise
    finally:
        _stop(slots)
    for kind in ("ran", "skipped", "failed"):  # in the plan's order, as a run with jobs=1 lists them
        getattr(job.summary, kind).sort(key=lambda entry: entry.get("_index", 0))
        for entry in getattr(job.summary, kind):
            entry.pop("_index", None)


def _next_answer(results) -> tuple[int, dict] | None:
    try:
        return results.get(timeout=POLL_S)
    except queue.Empty:
        return None


def _died(slot: _Slot) -> dict:
    _, spec, task = slot.busy
    code = slot.process.exitcode
    why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    error = f"WorkerDied: the worker process running it ended ({why}), e.g. killed or out of memory"
    entry = {"backbone": spec.label, "task": task.name, "error": error}
    return {"index": slot.busy[0], "ran": [], "skipped": [], "failed": [entry], "lines": [],
            "outcome": f"{spec.label} {task.name}: FAILED ({error})", "seconds": None}  # fmt: skip


def _finish(job, pair: tuple, result: dict) -> None:
    """Merge a finished pair into the summary and print its lines, then one line with the [k/N ...] prefix."""
    index, spec, task = pair
    for kind in ("ran", "skipped", "failed"):
        getattr(job.summary, kind).extend({**entry, "_index": index} for entry in result[kind])
    for line in result["lines"]:
        job.say(line)
    if job.tracker is None:
        job.say(result["outcome"])
        return
    job.tracker.done(task.name, None if result["skipped"] else result["seconds"])
    job.say(f"{job.tracker.prefix(job.tracker.total - len(job.tracker.pending))} {result['outcome']}")


def _stop(slots: list[_Slot], grace_s: float = 10.0) -> None:
    """Ask idle workers to end, stop busy ones (Ctrl-C, an error in the parent) and wait for all."""
    for slot in slots:
        if slot.process is None:
            continue
        if slot.busy is None and slot.process.is_alive():
            try:
                slot.inbox.put(None)
            except (OSError, ValueError):
                slot.process.terminate()
        else:
            slot.process.terminate()
    deadline = time.monotonic() + grace_s
    for slot in slots:
        if slot.process is None:
            continue
        slot.process.join(max(0.1, deadline - time.monotonic()))
        if slot.process.is_alive():
            slot.process.kill()
            slot.process.join()


# ------------------------------------------------------------------------------------------------ worker
def worker_main(settings: dict, number: int, inbox, results) -> None:
    """A worker process: run the pairs the parent sends until it sends None (or is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops the workers
    import torch

    from .claims import scratch_dir

    torch.set_num_threads(settings["threads"])
    # A spawned process defaults to spawning: give its DataLoader workers (and mmengine, which would force
    # fork with a warning) the start method this run's own process has, as with --jobs 1.
    mp.set_start_method(settings["start_method"], force=True)
    parent = mp.parent_process()
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    loaded: list = [None, None]  # the last (spec, model): the next pair of the same backbone reuses it
    with scratch_dir(settings["cache"] / "tmp", f"{settings['run_id']}-w{number}"):  # this worker's temp files
        while True:
            item = inbox.get()
            if item is None:
                return
            results.put((number, run_pair(settings, item, loaded)))


def _end_with(parent) -> None:
    """End this worker, mid-task too, once the parent is gone (killed): its records are whole or absent, its
    claims die with it, and its temp files are removed by the next run."""
    while parent is not None:
        if not parent.is_alive():
            os._exit(1)
        time.sleep(1.0)


def run_pair(settings: dict, item: dict, loaded: list) -> dict:
    """Run one (backbone, task) with the in-process runner; what the parent merges and prints."""
    from .results import ResultStore

    lines: list[str] = []
    outcome: list[str] = []
    spec: B.BackboneSpec = item["spec"]
    name = item["task"]
    summary = RunSummary(run_id=settings["run_id"], suite=settings["suite"], profile=settings["profile"])
    kwargs = {k: v for k, v in settings.items() if k not in ("out", "threads", "start_method")}
    job = Job(**kwargs, store=ResultStore(settings["out"]), summary=summary, say=lines.append,
              tracker=None, on_outcome=outcome.append)  # fmt: skip
    start = time.perf_counter()
    try:
        task = pickle.loads(item["payload"])  # imports the task's own module only, not every task's
        if loaded[0] != spec:
            loaded[:] = [None, None]  # free the previous backbone before loading the next
            if settings["device"].type == "cuda":
                import torch

                torch.cuda.empty_cache()
            loaded[:] = [spec, B.load(spec, device=settings["device"])]
        job.run_task(task, loaded[1], spec, item["resume"])
    except Exception as err:  # the backbone did not load (or the runner itself failed): this pair fails, not the run
        error = f"{type(err).__name__}: {err}"
        summary.failed.append({"backbone": spec.label, "task": name, "error": error})
        lines.append(f"{spec.label} {name}: FAILED\n{traceback.format_exc()}")
        outcome.append(f"{spec.label} {name}: FAILED ({error})")
    return {"index": item["index"], "ran": summary.ran, "skipped": summary.skipped, "failed": summary.failed,
            "lines": lines, "outcome": outcome[-1] if outcome else f"{spec.label} {name}: done",
            "seconds": time.perf_counter() - start}  # fmt: skip
