"""Time of the main job, the whole smoke suite, from an empty cache.

    python -m benchmarks.perf.smoke_suite [--suite all] [--threads 1] [--jobs auto] [--out results/perf]

Runs ``sinder-bench run --suite SUITE --profile smoke --jobs J`` in a child process with a fresh temporary cache
and output folder (synthetic datasets, the repaired twin, features and trainings all from scratch), then reads
the run records. Reports the wall time, the CPU time of the child and its worker processes (user + system, which
other users of a shared machine barely move, unlike the wall clock), the jobs, threads and cores, the machine's
load average before and after, and each (backbone, task)'s wall time from its record. ``wall_if_alone_s``: with
one job of one thread the wall time on an otherwise idle machine is about the CPU time; with J jobs of T threads
it lies between CPU time / min(J x T, cores) (every core busy throughout) and the CPU time. Target: 180 s on 2
cores, as the main job runs it (``--jobs auto``: 2 worker processes there). Writes ``smoke_suite.json``
atomically into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.core.workers import available_cores, parse_jobs, resolve_jobs
from sinder.utils.atomic import atomic_write_text

TARGET_S = 180.0


def alone_range(cpu_s: float, jobs: int, threads: int, cores: int) -> tuple[float, float]:
    """(low, high) wall seconds on an otherwise idle machine: every usable core busy throughout, or none shared."""
    parallel = max(1, min(jobs * threads, cores))
    return round(cpu_s / parallel, 1), round(cpu_s, 1)


def run_suite(suite: str, threads: int, work: Path, jobs: int | str = "auto") -> dict:
    """Run the suite in a child process; wall and CPU seconds, exit code and the records' task times."""
    env = dict(os.environ, SINDER_BENCH_CACHE=str(work / "cache"), OMP_NUM_THREADS=str(threads))
    code = (
        "import sys; from benchmarks.cli import main; sys.exit(main(['run', '--suite', sys.argv[2], '--profile', "
        "'smoke', '--out', sys.argv[3], '--threads', sys.argv[1], '--jobs', sys.argv[4], '--no-progress']))"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(threads), suite, str(work / "runs"), str(jobs)],
                          env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers too: the child waits for them
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tasks = []
    for path in sorted((work / "runs").rglob("*.json")):
        if path.parent.name == "summaries":
            continue
        record = json.loads(path.read_text())
        tasks.append({"backbone": record["backbone"]["label"], "task": record["task"],
                      "wall_s": round(record["wall_time_s"], 2)})  # fmt: skip
    tasks.sort(key=lambda t: -t["wall_s"])
    return {"exit_code": proc.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "tasks": tasks,
            "output_tail": proc.stdout.splitlines()[-6:] + proc.stderr.splitlines()[-6:]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="all", help="suite to time (default: all, the main job)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the run (default 1, as the main job)")
    parser.add_argument("--jobs", default="auto", type=parse_jobs,
                        help="run --jobs: pairs at once in worker processes (default auto, as the main job)")
    parser.add_argument("--baseline-jobs", default=None, type=parse_jobs,
                        help="also time the suite with this --jobs in the same invocation (its own empty cache): "
                             "the baseline the speed-up is measured against, e.g. 1")  # fmt: skip
    parser.add_argument("--out", default="results/perf", help="folder for smoke_suite.json")
    args = parser.parse_args(argv)
    jobs = resolve_jobs(args.jobs, "smoke", args.threads)  # what the child resolves `auto` to
    cores = available_cores()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="smoke-suite-") as tmp:
        result = run_suite(args.suite, args.threads, Path(tmp), jobs)
    baseline = None
    if args.baseline_jobs is not None:
        base_jobs = resolve_jobs(args.baseline_jobs, "smoke", args.threads)
        with tempfile.TemporaryDirectory(prefix="smoke-suite-baseline-") as tmp:
            base = run_suite(args.suite, args.threads, Path(tmp), base_jobs)
        baseline = {"jobs": base_jobs, **base, "speedup": round(base["wall_s"] / result["wall_s"], 2)}
    alone = alone_range(result["cpu_s"], jobs, args.threads, cores)
    report = {
        "benchmark": "smoke_suite",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suite": args.suite,
        "target_s": TARGET_S,
        "machine": {"cpu": platform.machine(), "cores": cores, "jobs": jobs, "torch_threads": args.threads,
                    "load_average_1min_before": round(load_before, 2),
                    "load_average_1min_after": round(os.getloadavg()[0], 2)},  # fmt: skip
        **result,
        "longest_task_s": max((t["wall_s"] for t in result["tasks"]), default=0.0),
        "wall_if_alone_s": alone[0] if alone[0] == alone[1] else list(alone),
        "within_target": result["wall_s"] <= TARGET_S,  # as measured, other users of the machine included
        # True / False when the whole range is within / beyond the target, None when it straddles it.
        "within_target_if_alone": True if alone[1] <= TARGET_S else (False if alone[0] > TARGET_S else None),
    }
    if baseline is not None:  # speedup: the baseline's wall time / this run's, both measured just now
        report["baseline"] = baseline
    out = Path(args.out) / ("smoke_suite.json" if args.suite == "all" else f"smoke_suite_{args.suite}.json")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"{args.suite}: wall {result['wall_s']} s, CPU {result['cpu_s']} s with {jobs} job(s) of "
          f"{args.threads} thread(s) on {cores} cores (alone: about {report['wall_if_alone_s']} s; target "
          f"{TARGET_S:.0f} s), load {load_before:.1f} -> {os.getloadavg()[0]:.1f}; exit {result['exit_code']} "
          f"-> {out}")  # fmt: skip
    if baseline is not None:
        print(f"baseline: wall {baseline['wall_s']} s, CPU {baseline['cpu_s']} s with {baseline['jobs']} job(s): "
              f"{baseline['speedup']}x slower than this run")  # fmt: skip
    return 0 if result["exit_code"] == 0 and (baseline is None or baseline["exit_code"] == 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
