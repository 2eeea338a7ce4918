"""The ``run`` verb's flags as one object, resolved the same way in-process and inside a launched job.

``sinder-bench run`` resolves its flags (threads, jobs, DataLoader workers, progress, ...) where the work runs:
in this process for ``--launcher inprocess``, inside each submitit job for ``--launcher local|slurm``. Both call
:meth:`RunArgs.resolve`, so a flag cannot reach one and miss the other (tests/test_launch.py compares them for
every flag of ``run``).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The ``run`` flags that decide what a run does (the launcher's own flags are in benchmarks/core/launch.py).
# Every one reaches run_suite or the process settings through RunArgs.resolve. ``--seeds`` is not one of them:
# it repeats the run, once per seed (RunArgs.for_seed; benchmarks/core/seeds.py in process, one job per seed
# launched).
RUN_FLAGS = ("data_root", "cache_dir", "resume", "device", "seed", "num_workers", "tensorboard", "threads", "jobs",
             "no_progress", "head_weights", "cfg_options")  # fmt: skip


@dataclass(frozen=True)
class RunArgs:
    """The flags of one ``run``, as parsed (None: not given, resolved where the run happens)."""

    data_root: str | None = None
    cache_dir: str | None = None
    resume: bool = False
    device: str | None = None
    seed: int = 0
    num_workers: int | None = None
    tensorboard: str | None = None
    threads: int | None = None
    jobs: int | str | None = None
    no_progress: bool = False
    head_weights: str | None = None
    cfg_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> RunArgs:
        values = {f.name: getattr(args, f.name) for f in fields(cls)}
        if values["seed"] is None:  # run's --seed defaults to None, to tell it from --seeds (seed_list)
            values["seed"] = 0
        return cls(**values)

    def for_seed(self, seed: int) -> RunArgs:
        """These flags with ``--seed seed`` (one pass of ``--seeds``)."""
        return RunArgs(**{**asdict(self), "seed": int(seed)})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def for_task(self, task: str) -> RunArgs:
        """These flags for a job that runs ``task`` only: its own ``--cfg-options``."""
        options = {k: v for k, v in (self.cfg_options or {}).items() if k.partition(".")[0] == task}
        return RunArgs(**{**asdict(self), "cfg_options": options})

    def resolved_threads(self, profile: str) -> int | None:
        """torch intra-op threads: the flag, else 1 for profile smoke (its tiny models), else torch's default."""
        threads = self.threads if self.threads is not None else (1 if profile == "smoke" else None)
        if threads is not None and threads < 1:
            raise ValueError(f"--threads {threads}: give 1 or more")
        return threads

    def resolve(self, profile: str, cpus: int | None = None) -> tuple[int | None, dict[str, Any]]:
        """(torch threads or None, run_suite's keyword arguments) on a machine with ``cpus`` CPUs (default: this
        process's). A bad value is a ValueError (exit 2)."""
        from .task_config import default_loader_workers
        from .workers import available_cores, requested_jobs, resolve_jobs

        threads = self.resolved_threads(profile)
        jobs = resolve_jobs(requested_jobs(self.jobs), profile, threads)
        workers = self.num_workers
        if workers is None:
            workers = default_loader_workers(profile, cpus if cpus is not None else available_cores())
        kwargs = {"data_root": self.data_root, "cache_dir": self.cache_dir, "resume": self.resume,
                  "device": self.device, "seed": self.seed, "num_workers": workers,
                  "progress": not self.no_progress, "head_weights": self.head_weights,
                  "cfg_options": dict(self.cfg_options or {}), "jobs": jobs,
                  "tensorboard_dir": self.tensorboard}  # fmt: skip
        return threads, kwargs


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct non-negative integers, comma-separated; a ValueError names the problem."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError(f"--seeds {text!r}: no seed; give distinct non-negative integers, e.g. --seeds 0,1,2")
    seeds = []
    for item in items:
        if not (item.isascii() and item.isdigit()):  # also refuses "-1", "1.5", "" (a stray comma)
            raise ValueError(f"--seeds {text!r}: {item!r} is not a non-negative integer; e.g. --seeds 0,1,2")
        if int(item) in seeds:
            raise ValueError(f"--seeds {text!r}: seed {int(item)} is given twice; each seed runs once")
        seeds.append(int(item))
    return seeds


def seed_list(args: argparse.Namespace) -> list[int] | None:
    """The seeds of ``run --seeds`` (None without it: one run of ``--seed``); ValueError for a bad list or
    for ``--seed`` given too."""
    if getattr(args, "seeds", None) is None:
        return None
    if args.seed is not None:
        raise ValueError(f"--seed {args.seed} and --seeds {args.seeds}: give one of them (--seeds S runs seed S "
                         "alone)")  # fmt: skip
    return parse_seeds(args.seeds)


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (None: leave torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
