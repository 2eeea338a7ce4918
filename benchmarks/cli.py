"""`sinder-bench` command line: parse, call the library, print.

Each verb lives in the module that owns its capability and exposes ``register(subparsers)``, which adds its
sub-parser (built from the shared parents of ``sinder.cli.common``) and sets ``func`` (called with the parsed
namespace, returns an exit code). The CLI only collects them, configures logging once, and turns a usage error
into ``error: <message>`` on stderr and exit 2 (``sinder.cli.common.run_verb``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute verbs, in the order they appear in --help.
VERB_MODULES = [
    "benchmarks.data.commands",
    "sinder.cli.analyze",
    "sinder.cli.repair",
    "sinder.cli.ttr",
    "benchmarks.core.commands",  # ls, run, report, compare
    "benchmarks.core.launch",  # after commands: adds --launcher to its `run`, and `status`
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sinder-bench",
        description="Repair DINOv2 singular defects (SINDER) and benchmark ViT backbones.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages (debug lines, the traceback behind an error: ... line)")  # fmt: skip
    parser.add_argument("-q", "--quiet", action="count", default=0, help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sinder.cli.common import run_verb
    from sinder.utils.log import configure

    configure(logging.INFO)  # before parsing: a deprecated flag warns while it is parsed
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose or args.quiet:
        configure(logging.DEBUG if args.verbose > args.quiet else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_verb(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
