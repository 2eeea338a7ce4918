"""`sinder-bench` command line: parse, call the library, print.

Each verb lives in the module that owns its capability and exposes ``register(subparsers)``, which adds its
sub-parser and sets ``func`` (called with the parsed namespace, returns an exit code). The CLI only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute verbs, in the order they appear in --help.
VERB_MODULES = [
    "benchmarks.commands.ls",
    "benchmarks.data.commands",
    "sinder.cli.analyze",
    "sinder.cli.repair",
    "sinder.cli.ttr",
    "benchmarks.core.commands",
    "benchmarks.core.launch",  # after commands: adds --launcher to its `run`, and `status`
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sinder-bench",
        description="Repair DINOv2 singular defects (SINDER) and benchmark ViT backbones.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
