"""Time of the main job, the whole smoke suite, from an empty cache.

    python -m benchmarks.perf.smoke_suite [--suite all] [--threads 1] [--out results/perf]

Runs ``sinder-bench run --suite SUITE --profile smoke`` in a child process with a fresh temporary cache and
output folder (synthetic datasets, the repaired twin, features and trainings all from scratch), then reads the
run records. Reports the wall time, the child's CPU time (user + system, which other users of a shared machine
barely move, unlike the wall clock), the machine's load average before and after, and each (backbone, task)'s
wall time from its record. The main job runs torch on one thread (``run --threads``, default 1 for smoke), so on
an otherwise idle machine its wall time is about its CPU time: ``wall_if_alone_s`` (with more threads, the range
from CPU time / threads to CPU time). Target: 180 s on 2 cores.
Writes ``smoke_suite.json`` atomically into --out.
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

from sinder.atomic import atomic_write_text

TARGET_S = 180.0


def run_suite(suite: str, threads: int, work: Path) -> dict:
    """Run the suite in a child process; wall and CPU seconds, exit code and the records' task times."""
    env = dict(os.environ, SINDER_BENCH_CACHE=str(work / "cache"), OMP_NUM_THREADS=str(threads))
    code = (
        "import sys; from benchmarks.cli import main; sys.exit(main(['run', '--suite', sys.argv[2], '--profile', "
        "'smoke', '--out', sys.argv[3], '--threads', sys.argv[1], '--no-progress']))"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(threads), suite, str(work / "runs")], env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    tasks = []
    for path in sorted((work / "runs").rglob("*.json")):
        if path.parent.name == "summaries":
            continue
        record = json.loads(path.read_text())
        tasks.append({"backbone": record["backbone"]["label"], "task": record["task"],
                      "wall_s": round(record["wall_time_s"], 2)})  # fmt: skip
    tasks.sort(key=lambda t: -t["wall_s"])
    return {"exit_code": proc.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "wall_if_alone_s": round(cpu, 1) if threads == 1 else [round(cpu / threads, 1), round(cpu, 1)],
            "tasks": tasks,
            "output_tail": proc.stdout.splitlines()[-6:] + proc.stderr.splitlines()[-6:]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="all", help="suite to time (default: all, the main job)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the run (default 1, as the main job)")
    parser.add_argument("--out", default="results/perf", help="folder for smoke_suite.json")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="smoke-suite-") as tmp:
        result = run_suite(args.suite, args.threads, Path(tmp))
    report = {
        "benchmark": "smoke_suite",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suite": args.suite,
        "target_s": TARGET_S,
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "torch_threads": args.threads,
                    "load_average_1min_before": round(load_before, 2),
                    "load_average_1min_after": round(os.getloadavg()[0], 2)},  # fmt: skip
        **result,
        "within_target_if_alone": result["cpu_s"] <= TARGET_S,
    }
    out = Path(args.out) / ("smoke_suite.json" if args.suite == "all" else f"smoke_suite_{args.suite}.json")
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"{args.suite}: wall {result['wall_s']} s, CPU {result['cpu_s']} s "
          f"(alone: about {result['wall_if_alone_s']} s with {args.threads} thread(s); target {TARGET_S:.0f} s), "
          f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}; exit {result['exit_code']} -> {out}")  # fmt: skip
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
