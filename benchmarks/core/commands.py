"""The ``run``, ``report`` and ``compare`` verbs of ``sinder-bench`` (parse, call the library, print)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a benchmark suite on backbones and write one record per (backbone, task)",
        description="Run a suite (table1..table7, all, or one task name) and write run records. Profile paper reads "
        "the real datasets under --data-root (or $SINDER_BENCH_DATA); profile smoke generates synthetic twins and "
        "defaults to the defective tiny backbone and its repaired twin.",
    )
    run.add_argument("--suite", required=True, help="suite name (see `sinder-bench ls`) or a single task name")
    run.add_argument(
        "--backbone", action="append", default=None, metavar="SPEC",
        help="[LABEL=]NAME[:WEIGHTS], repeatable; e.g. dinov2_vitg14 or sinder=dinov2_vitg14:sinder.safetensors",
    )  # fmt: skip
    run.add_argument("--profile", choices=("paper", "smoke"), default="paper")
    run.add_argument("--data-root", default=None, help="folder holding the datasets (default: $SINDER_BENCH_DATA)")
    run.add_argument("--out", default="results/runs", help="run record folder (default: results/runs)")
    run.add_argument("--cache-dir", default=None, help="features, synthetic data (default: ~/.cache/sinder-bench)")
    run.add_argument("--resume", action="store_true", help="skip (backbone, task, profile) already recorded in --out")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: 0 for smoke, up to 8 for paper)"
    )
    run.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: 1 for profile smoke, whose tiny models run slower on more threads, "
        "up to 20x on a busy machine; torch's own default for paper)",
    )  # fmt: skip
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    report = subparsers.add_parser(
        "report",
        help="the paper's tables with our numbers and deltas beside them",
        description="Lay out the paper's Tables 1-7 with the paper's numbers, ours (from run records) and deltas.",
    )
    report.add_argument("--runs", default="results/runs", help="folder of run records")
    report.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    report.add_argument("--tables", default="1-7", help="e.g. 3, 1-5, 1,3,5 (default 1-7)")
    report.add_argument(
        "--out", default="results/tables", help="where tableN.{md,tex,csv} and tableN.png go (default results/tables)"
    )
    report.add_argument("--no-plots", action="store_true", help="skip the PNG bar charts")
    report.set_defaults(func=_cmd_report)

    compare = subparsers.add_parser(
        "compare",
        help="regression gate: new run records against baseline records (exit 1 on regression)",
        description="Compare metrics of --new records with --baseline records; exit 0 when no metric regressed "
        "beyond tolerance, 1 on a regression, 2 when the input is unusable.",
    )
    compare.add_argument("--new", required=True, nargs="+", help="run records (files or folders) to check")
    compare.add_argument("--baseline", required=True, nargs="+", help="run records to compare against")
    compare.add_argument("--tolerance", default=None, help="YAML/JSON file of tolerances per metric")
    compare.add_argument("--format", choices=("md", "csv"), default="md")
    compare.set_defaults(func=_cmd_compare)


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import PreflightError, format_summary, run_suite

    started = time.monotonic()
    threads = args.threads if args.threads is not None else (1 if args.profile == "smoke" else None)
    if threads is not None:
        if threads < 1:
            print(f"error: --threads {threads}: give 1 or more", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(threads)
    workers = args.num_workers
    if workers is None:  # decoding ImageNet JPEGs in the main process would starve the GPU
        workers = 0 if args.profile == "smoke" else min(8, os.cpu_count() or 1)
    try:
        summary = run_suite(
            args.suite, args.backbone, profile=args.profile, data_root=args.data_root, out=args.out,
            cache_dir=args.cache_dir, resume=args.resume, device=args.device, seed=args.seed,
            num_workers=workers, progress=not args.no_progress,
        )  # fmt: skip
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    from . import distributed as D

    if D.is_main():
        from .progress import where_next

        print(format_summary(summary))
        summary_file = Path(args.out) / "summaries" / f"{summary.run_id}.json"
        print(where_next(args.out, str(summary_file) if summary_file.is_file() else None, len(summary.ran),
                         time.monotonic() - started))  # fmt: skip
    return summary.exit_code


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import ReportError, build_report, parse_tables

    missing = [path for path in [args.runs] if not Path(path).exists()]
    if missing:
        print(f"error: --runs {missing[0]}: no such folder of run records; `sinder-bench run` writes them "
              "(default results/runs)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        text = build_report(
            args.runs, fmt=args.format, tables=args.tables, out_dir=Path(args.out) if args.out else None,
            plots=not args.no_plots,
        )  # fmt: skip
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        numbers = parse_tables(args.tables)
        suffix = {"md": "md", "latex": "tex", "csv": "csv"}[args.format]
        kinds = suffix if args.no_plots else f"{{{suffix},png}}"
        which = f"table{numbers[0]}" if len(numbers) == 1 else f"table{{{','.join(map(str, numbers))}}}"
        print(f"\ntables written: {Path(args.out) / which}.{kinds}", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_main

    return compare_main(args.new, args.baseline, tolerance_file=args.tolerance, fmt=args.format)
