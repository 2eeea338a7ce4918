"""TensorBoard scalars of the long trainings (``sinder-bench run --tensorboard DIR``; off by default).

The linear probe, the depth head and the mmseg head write their loss and learning rate per step, so a
training of hours is watched rather than guessed: ``tensorboard --logdir DIR``. Each (task, backbone) run
gets its own folder, ``DIR/<task>/<backbone label>-<run key>``; only rank 0 writes under torchrun. The
scalars are a side channel: they change neither the numbers nor the run identity.

The folder reaches the tasks as ``ctx.tensorboard_dir`` (``run_suite(tensorboard_dir=...)``, which worker
processes and launched jobs get with the rest of the run's settings). Needs the ``tensorboard`` package (``pip install 'sinder-bench[tensorboard]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from benchmarks.core import distributed as D


class ScalarWriter(Protocol):
    """What the trainings call: ``torch.utils.tensorboard.SummaryWriter`` has it."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any: ...


def tensorboard_problem() -> str | None:
    """Why ``--tensorboard`` cannot work here (the package is missing), or None."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (it imports tensorboard)
    except ImportError as err:
        return (f"--tensorboard needs the tensorboard package ({err}): pip install tensorboard "
                "(or the project's [tensorboard] extra)")  # fmt: skip
    return None


def tensorboard_root(ctx=None) -> Path | None:
    """The ``--tensorboard`` folder of this run, or None when scalars are off."""
    root = getattr(ctx, "tensorboard_dir", None)
    return Path(root).expanduser() if root else None


def run_log_dir(ctx, task: str) -> Path | None:
    """``<root>/<task>/<backbone label>-<run key>``: one folder per (task, backbone) run; None when off."""
    root = tensorboard_root(ctx)
    if root is None:
        return None
    label = re.sub(r"[^A-Za-z0-9_.+-]", "_", getattr(ctx, "backbone_label", "") or "backbone")
    key = getattr(ctx, "run_key", "") or ""
    return root / task / (f"{label}-{key[:12]}" if key else label)


@contextlib.contextmanager
def scalar_writer(ctx, task: str) -> Iterator[ScalarWriter | None]:
    """A SummaryWriter into :func:`run_log_dir` on rank 0 (closed, so flushed, at the end); None when off or
    on another rank."""
    folder = run_log_dir(ctx, task)
    if folder is None or not D.is_main():
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        yield writer
    finally:
        writer.close()


class TensorboardAction(argparse.Action):
    """``run --tensorboard DIR``: checks that tensorboard imports (else a usage error, exit 2)."""

    def __call__(self, parser, namespace, values, option_string=None):
        problem = tensorboard_problem()
        if problem:
            parser.error(problem)
        folder = Path(values).expanduser().resolve()
        setattr(namespace, self.dest, folder)
