"""``sinder-bench data``: ``synth`` writes synthetic twins; ``check`` validates a real dataset folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.data.errors import DatasetLayoutError
from benchmarks.data.specs import DATASETS
from sinder.cli.common import UsageError, out_parent, seed_parent


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="dataset layouts: write synthetic twins, check real folders")
    verbs = parser.add_subparsers(dest="data_verb", metavar="SUBVERB", required=True)

    synth = verbs.add_parser(
        "synth", help="write a small synthetic dataset in the real dataset's layout",
        parents=[out_parent("output folder (with all: one subfolder per dataset)", required=True, type=Path),
                 seed_parent()],
    )  # fmt: skip
    synth.add_argument("--dataset", required=True, choices=[*DATASETS, "all"], help="dataset name, or all")
    synth.add_argument("--n-train", type=int, default=None, help="train samples (per class for imagenet)")
    synth.add_argument("--n-val", type=int, default=None, help="val/test samples (per class for imagenet)")
    synth.add_argument(
        "--size", type=int, default=None, help="image height in pixels (width keeps the aspect)"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    synth.set_defaults(func=run_synth)

    check = verbs.add_parser("check", help="validate a dataset folder against its expected layout")
    check.add_argument("--dataset", required=True, choices=list(DATASETS))
    check.add_argument("--root", required=True, type=Path, help="the dataset's root folder")
    check.add_argument(
        "--split", action="append", help="split(s) to check (default: all the dataset's splits)"
    )
    check.add_argument("--deep", action="store_true", help="also decode every file (slow on full datasets)")
    check.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from benchmarks.data.synth import write_synthetic

    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    for name in names:
        out = args.out / name if args.dataset == "all" else args.out
        start = time.perf_counter()
        try:
            result = write_synthetic(
                name, out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, size=args.size,
                overwrite=args.overwrite,
            )  # fmt: skip
        except FileExistsError:  # the library's message names its keyword; the user needs the flag
            raise UsageError(f"{out} is not empty; choose an empty folder or pass --overwrite to replace it") from None
        counts = ", ".join(f"{split} {len(samples)}" for split, samples in result.truths.items())
        seconds = time.perf_counter() - start
        print(f"{name}: {len(result.files)} files ({counts}) in {result.root} [{seconds:.2f} s]")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from benchmarks.data.loaders import open_dataset

    spec = DATASETS[args.dataset]
    for split in args.split or spec.splits:
        try:
            dataset = open_dataset(args.dataset, args.root, split)
            count = dataset.verify() if args.deep else len(dataset)
        except DatasetLayoutError as err:  # the check ran and failed: exit 1, as a failed check
            raise UsageError(str(err), exit_code=1) from err
        print(
            f"{args.dataset} {split}: {count} samples ok{' (all decoded)' if args.deep else ''} in {dataset.root}"
        )
    return 0
