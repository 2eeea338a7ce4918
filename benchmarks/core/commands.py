"""The ``ls``, ``run``, ``report`` and ``compare`` verbs of ``sinder-bench`` (parse, call the library, print)."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

from sinder.cli.common import UsageError, backbone_parent, device_parent, out_parent, seed_parent

from .scalars import TensorboardAction


def register(subparsers) -> None:
    ls = subparsers.add_parser("ls", help="list backbones, model families, checkpoint formats, datasets, tasks and "
                               "suites")  # fmt: skip
    ls.add_argument("what", nargs="?", choices=["backbones", "families", "formats", "datasets", "tasks", "suites"])
    ls.set_defaults(func=_cmd_ls)

    run = subparsers.add_parser(
        "run",
        help="run a benchmark suite on backbones and write one record per (backbone, task)",
        description="Run a suite (table1..table7, all, remedies, a task name, or several comma-separated) and write run records. Profile paper reads "
        "the real datasets under --data-root (or $SINDER_BENCH_DATA); profile smoke generates synthetic twins and "
        "defaults to the defective tiny backbone and its repaired twin. Exit 0 when every requested task ran or was "
        "already recorded; 1 when a task failed or was not available (after running the rest; the summary lists "
        "them); 2 when inputs are missing or invalid (one message lists every problem, before any work).",
        parents=[backbone_parent(repeatable=True), out_parent(RUNS_HELP, default="results/runs"), device_parent(),
                 seed_parent()],
    )  # fmt: skip
    run.set_defaults(seed=None)  # not given (0) told from given, which --seeds refuses (run_args.seed_list)
    run._option_string_actions["--seed"].help = "random seed (default 0)"
    run.add_argument("--seeds", default=None, metavar="S,S,...",
                     help="run the suite once per seed into the same --out, e.g. 0,1,2 (distinct non-negative "
                     "integers; instead of --seed): report shows mean ± sd over the seeds; with --resume the "
                     "recorded seeds are skipped; the exit code is the worst seed's; --launcher local|slurm "
                     "submits each job once per seed")  # fmt: skip
    run.add_argument("--suite", required=True,
                     help="a suite (all: Tables 1-7; remedies; table1 ... table7; see `sinder-bench ls suites`), a "
                     "single task name, or several of either comma-separated, e.g. table3,table4")  # fmt: skip
    run.add_argument("--profile", choices=("paper", "smoke"), default="paper",
                     help="paper (the default): the paper's protocol on the real datasets under --data-root; smoke: "
                     "the same tasks scaled down on synthetic twins and the tiny models, minutes on a CPU")  # fmt: skip
    run.add_argument("--data-root", default=None, help="folder holding the datasets (default: $SINDER_BENCH_DATA)")
    run.add_argument("--cache-dir", default=None, help="features, synthetic data (default: ~/.cache/sinder-bench)")
    run.add_argument(
        "--resume", action="store_true",
        help="skip runs already recorded in --out: same weights (content hash), task version, config, seed and "
        "profile; a record of the same weights under another label is reused under this one",
    )  # fmt: skip
    run.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: 0 for smoke, up to 8 for paper)"
    )
    run.add_argument("--tensorboard", metavar="DIR", action=TensorboardAction, default=None,
                     help="write the loss and lr of the linear probe, depth and mmseg trainings as TensorBoard "
                     "scalars under DIR/<task>/<backbone>-<run key> (default: off)")  # fmt: skip
    run.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (default: 1 for profile smoke, whose tiny models run slower on more threads, "
        "up to 20x on a busy machine; torch's own default for paper)",
    )  # fmt: skip
    run.add_argument(
        "--jobs", type=_jobs_arg, default=None, metavar="N|auto",
        help="run up to N (backbone, task) pairs at once, in N worker processes of --threads threads each, the "
        "longest first (default: $SINDER_BENCH_JOBS, else auto: min(2, cores // threads) for profile smoke, 1 for "
        "paper, whose large models must not train two at once on one GPU; 1 under torchrun, which refuses N > 1)",
    )  # fmt: skip
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--head-weights", default=None, metavar="DIR",
        help="evaluate DINOv2's released heads from DIR (official file names) instead of training heads "
        "(table5 depth heads, table4 segmentation heads)",
    )  # fmt: skip
    from .task_config import CfgOptionsAction

    run.add_argument(
        "--cfg-options", nargs="+", action=CfgOptionsAction, default={}, metavar="TASK.KEY=VALUE",
        help="set keys of a task's profile (profiles/<task>/<profile>.yaml), e.g. imagenet_linear.iterations=100 "
        "imagenet_knn.ks=[10,20]; values typed as YAML; an unknown task or key stops the run before any work",
    )  # fmt: skip
    run.set_defaults(func=_cmd_run)
    show_help = run.format_help

    def format_help() -> str:  # the remedies are discovered (imported) only when the help is asked for
        run.epilog = run_epilog()
        run.description = textwrap.fill(" ".join(run.description.split()), 79)  # the raw formatter keeps lines
        return show_help()

    run.format_help = format_help
    run.formatter_class = argparse.RawDescriptionHelpFormatter

    report = subparsers.add_parser(
        "report",
        help="the paper's tables with our numbers and deltas beside them",
        description="Lay out the paper's Tables 1-7 with the paper's numbers, ours (from run records) and deltas. "
        "Our backbones fill the paper's rows by role, not label: an official release is DINOv2, a register "
        "release DINOv2-Register, a SINDER repair (as its checkpoint metadata says) DINOv2-SINDER. Each table "
        "also shows the effect of each remedy over its own base, with tableN_effects.png; with records of "
        "remedies (suite remedies), remedies.{md,png} set each remedy beside its base with its cost.",
        parents=[out_parent("where tableN.{md,tex,csv} and tableN.png go (default results/tables)",
                            default="results/tables")],
    )  # fmt: skip
    report.add_argument("--runs", default="results/runs", help="folder of run records")
    report.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    report.add_argument("--tables", default="1-7", help="e.g. 3, 1-5, 1,3,5 (default 1-7)")
    report.add_argument("--no-plots", action="store_true", help="skip the PNG bar charts")
    report.set_defaults(func=_cmd_report)

    from .compare import TOLERANCE_HELP

    compare = subparsers.add_parser(
        "compare",
        help="regression gate: new run records against baseline records (exit 1 on regression)",
        description="Compare metrics of --new records with --baseline records, grouped by backbone (content hash "
        "and role, not label), task and profile. Exit 0 only when every baseline metric was compared and none "
        "regressed; 1 on a regression or a non-finite value, when a baseline (backbone, task) or metric is missing "
        "from the new records, when a new record is of a failed task or a new (backbone, task) has no baseline; 2 "
        "when the input is unusable (no records, a bad tolerance file, shared or conflicting records, a config "
        "change without --allow-config-change, a baseline that gates nothing). README: 'What the gate guarantees'.",
        epilog=TOLERANCE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--new", required=True, nargs="+", help="run records (files or folders) to check")
    compare.add_argument("--baseline", required=True, nargs="+", help="run records to compare against")
    compare.add_argument("--tolerance", default=None, help="YAML/JSON file of tolerances per metric (format below)")
    compare.add_argument("--format", choices=("md", "csv"), default="md")
    compare.add_argument("--allow-config-change", action="store_true",
                         help="compare records whose resolved config or task version differ from the baseline's "
                         "(listed as CONFIG CHANGE); without it they are an error (exit 2)")
    compare.set_defaults(func=_cmd_compare)


RUNS_HELP = "run record folder (default: results/runs)"


# -------------------------------------------------------------------------------------------------- ls
def run_epilog() -> str:
    """The end of ``run --help``: the backbone spelling with the registered remedies (each with its own ARGS,
    from the remedy registry: core names none), and examples."""
    from .remedy import get_remedy, list_remedies

    remedies = [f"  +{name}" + (f":{get_remedy(name).args_help}" if get_remedy(name).args_help else "")
                + (f"  {get_remedy(name).title}" if get_remedy(name).title else "") for name in list_remedies()]
    return "\n".join([
        "--backbone [LABEL=]SPEC[+REMEDY[:ARGS]]: a remedy applied to SPEC (repeat --backbone per backbone); REMEDY:",
        *remedies,
        "",
        "examples:",
        "  sinder-bench run --suite all --profile smoke          # the main job: every table on the tiny models",
        "  sinder-bench run --suite remedies --profile smoke --seeds 0,1,2   # each remedy's effect, mean ± sd",
        "  sinder-bench run --suite table3,table4 --data-root /data --backbone dinov2_vitg14 \\",
        "      --backbone sinder=dinov2_vitg14:dinov2_vitg14_sinder.safetensors",
    ])  # fmt: skip


def ls_sections() -> dict[str, dict[str, str]]:
    """What this installation knows, for ``sinder-bench ls``: each section's names with their one-line titles."""
    from benchmarks.core.registry import get_suite, get_task, list_suites, list_tasks
    from benchmarks.data import DATASETS
    from sinder.models.weights import list_backbones

    return {
        "backbones": list_backbones(),
        "families": family_lines(),
        "formats": format_lines(),
        "datasets": {name: spec.description for name, spec in DATASETS.items()},
        "tasks": {name: _task_line(get_task(name)) for name in list_tasks()},
        "suites": {name: _suite_line(get_suite(name)) for name in list_suites()},
    }


def family_lines() -> dict[str, str]:
    """Each ViT family ``--backbone LABEL=PATH`` loads (sinder.models.adapter.FAMILIES) with its default
    normalisation (a checkpoint's own preprocessor_config.json wins)."""
    from sinder.models.adapter import FAMILIES, FAMILY_MEAN_STD

    def numbers(values) -> str:
        return "(" + ", ".join(f"{v:g}" for v in values) + ")"

    out = {}
    for family in FAMILIES:
        stats = FAMILY_MEAN_STD.get(family)
        out[family] = f"default mean {numbers(stats[0])}, std {numbers(stats[1])}" if stats else ""
    return out


def format_lines() -> dict[str, str]:
    """The checkpoint formats load_backbone reads and repairs write (sinder.models.formats.FORMATS)."""
    from sinder.models.formats import FORMATS

    what = {"official": "a DINOv2 repository state dict (.pth / .safetensors)",
            "hf": "a transformers save_pretrained folder (config.json + model.safetensors)",
            "timm": "a timm state dict (.safetensors / .pth), or a timm folder (config.json + model.safetensors)",
            "open_clip": "OpenCLIP's layout (visual.transformer.resblocks.*): a file, or a folder with "
                         "open_clip_config.json"}  # fmt: skip
    return {name: what.get(name, "") for name in FORMATS}


def _task_line(task) -> str:
    """``Table 3: ...`` title, and the paper table it fills when the title does not say it."""
    title = getattr(task, "title", "") or ""
    table = getattr(task, "table", "") or ""
    if table and table.replace("table", "Table ") not in title:
        title = f"{title} ({table})" if title else table
    return title


def _suite_line(suite) -> str:
    """The suite's title and how many tasks it runs."""
    count = f"{len(suite.tasks)} task{'s' if len(suite.tasks) != 1 else ''}"
    return f"{suite.title} ({count})" if suite.title else count


def _cmd_ls(args: argparse.Namespace) -> int:
    sections = ls_sections()
    wanted = [args.what] if args.what else list(sections)
    for title in wanted:
        print(f"{title}:")
        entries = sections[title]
        width = max((len(k) for k in entries), default=0)
        for key, text in entries.items():
            print(f"  {key:<{width}}  {text}".rstrip())
    return 0


# ------------------------------------------------------------------------------------------------- run
def _jobs_arg(text: str):
    from .workers import parse_jobs

    try:
        return parse_jobs(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def seeds_of(args: argparse.Namespace) -> list[int] | None:
    """``run --seeds`` as a list (None: one run of ``--seed``); a bad list, or ``--seed`` too, is a UsageError."""
    from .run_args import seed_list

    try:
        return seed_list(args)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from .run_args import RunArgs, apply_threads
    from .runner import PreflightError, format_summary, run_suite
    from .workers import distributed_refusal, under_torchrun

    started = time.monotonic()
    seeds = seeds_of(args)
    threads, kwargs = RunArgs.from_namespace(args).resolve(args.profile)  # the same in a launched job
    apply_threads(threads)
    if kwargs["jobs"] > 1 and under_torchrun():
        raise UsageError(distributed_refusal(kwargs["jobs"]))
    try:
        if seeds is not None:
            from .seeds import run_seeds

            result = run_seeds(args.suite, args.backbone, seeds=seeds, profile=args.profile, out=args.out, **kwargs)
        else:
            summary = run_suite(args.suite, args.backbone, profile=args.profile, out=args.out, **kwargs)
    except PreflightError as err:  # a RuntimeError: the inputs are checked before any work
        raise UsageError(str(err)) from err
    from . import distributed as D

    if not D.is_main():
        return result.exit_code if seeds is not None else summary.exit_code
    from .progress import where_next

    if seeds is not None:
        from .seeds import format_seeds_summary

        print(format_seeds_summary(result))
        ran = sum(len(s.ran) for s in result.summaries.values())
        print(where_next(args.out, f"{Path(args.out) / 'summaries'}/ (one per seed)", ran, time.monotonic() - started))
        return result.exit_code
    print(format_summary(summary))
    summary_file = Path(args.out) / "summaries" / f"{summary.run_id}.json"
    print(where_next(args.out, str(summary_file) if summary_file.is_file() else None, len(summary.ran),
                     time.monotonic() - started))  # fmt: skip
    return summary.exit_code


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report, parse_tables

    if not Path(args.runs).exists():
        raise UsageError(f"--runs {args.runs}: no such folder of run records; `sinder-bench run` writes them "
                         "(default results/runs)")  # fmt: skip
    _check_report_inputs(args)
    started = time.time()
    # A ReportError (a ValueError) reaches the CLI's main: exit 2.
    text = build_report(
        args.runs, fmt=args.format, tables=args.tables, out_dir=Path(args.out) if args.out else None,
        plots=not args.no_plots,
    )  # fmt: skip
    print(text)
    if args.out:
        numbers = parse_tables(args.tables)
        suffix = {"md": "md", "latex": "tex", "csv": "csv"}[args.format]
        kinds = suffix if args.no_plots else f"{{{suffix},png}}"
        which = f"table{numbers[0]}" if len(numbers) == 1 else f"table{{{','.join(map(str, numbers))}}}"
        print(f"\ntables written: {Path(args.out) / which}.{kinds}", file=sys.stderr)
        remedies = Path(args.out) / f"remedies.{suffix}"
        if remedies.is_file() and remedies.stat().st_mtime >= started - 1:  # written now: the runs hold remedies
            print(f"remedies table written: {Path(args.out) / 'remedies'}.{kinds}", file=sys.stderr)
    return 0


def _check_report_inputs(args: argparse.Namespace) -> None:
    """Before any work: --out writable, and --runs holding a successful record (else the tables would hold the
    paper's numbers only, and exit 0 would say that the runs were reported)."""
    from sinder.cli.common import check_writable

    from .results import is_failure, load_records

    if args.out:
        check_writable(args.out, "--out")
    records = load_records(args.runs, missing_ok=True)
    if not any(not is_failure(r) for r in records):
        what = f"only {len(records)} failed record(s)" if records else "no run records"
        raise UsageError(f"--runs {args.runs}: {what}; nothing to report beside the paper's numbers "
                         "(`sinder-bench run` writes the records)")  # fmt: skip


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_main

    return compare_main(args.new, args.baseline, tolerance_file=args.tolerance, fmt=args.format,
                        allow_config_change=args.allow_config_change)
