"""``sinder-bench run --seeds 0,1,2``: the suite once per seed, into one records folder.

Each seed is one :func:`benchmarks.core.runner.run_suite` pass (the seed is part of the run identity, so the
records of the seeds sit side by side, ``--resume`` skips the seeds already recorded, and ``report`` averages
over them). The first pass's preflight checks disk room for every seed; a later pass whose inputs fail its own
preflight (a smoke twin that cannot be written) is reported and the other seeds still run. The exit code is the
worst of the seeds': 0 ran or recorded, 1 a task failed or was not available, 2 a pass could not start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .job import RunSummary

logger = logging.getLogger(__name__)


@dataclass
class SeedsSummary:
    """What each seed's pass did: its run summary, or why it could not start."""

    suite: str
    profile: str
    seeds: list[int]
    summaries: dict[int, RunSummary] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # seed -> its preflight message

    @property
    def exit_code(self) -> int:
        codes = [s.exit_code for s in self.summaries.values()] + [2] * len(self.refused)
        return max(codes, default=0)


def run_seeds(suite: str, backbones: Sequence[str] | None, *, seeds: Sequence[int],
              say: Callable[[str], None] | None = None, **kwargs: Any) -> SeedsSummary:  # fmt: skip
    """``run_suite(suite, backbones, seed=s, **kwargs)`` for each seed in order. The first pass's
    PreflightError is raised (nothing ran: exit 2 before any work); a later one is kept in ``refused``."""
    from . import distributed as D
    from .runner import PreflightError, format_summary, run_suite

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds {seeds}: give distinct non-negative integers")
    say = say or (lambda msg: logger.info(msg) if D.is_main() else None)
    kwargs.pop("seed", None)  # RunArgs.resolve's --seed: each pass sets its own
    result = SeedsSummary(suite=suite, profile=kwargs.get("profile", "paper"), seeds=seeds)
    for k, seed in enumerate(seeds, start=1):
        say(f"seed {seed} ({k} of {len(seeds)} seeds): suite {suite}")
        try:
            result.summaries[seed] = run_suite(suite, backbones, seed=seed, seed_pass=(k, len(seeds)), **kwargs)
            say(f"seed {seed}: {format_summary(result.summaries[seed])}")
        except PreflightError as err:
            if k == 1:
                raise
            result.refused[seed] = str(err)
            say(f"seed {seed}: {err}")
    return result


def format_seeds_summary(result: SeedsSummary) -> str:
    """One line per seed (ran, recorded, failed, not available; or why it could not start) and the exit code."""
    lines = [f"suite {result.suite} (profile {result.profile}) over {len(result.seeds)} seed(s) "
             f"{','.join(map(str, result.seeds))}: exit {result.exit_code}"]  # fmt: skip
    for seed in result.seeds:
        if seed in result.refused:
            lines.append(f"  seed {seed}: did not start: {result.refused[seed].splitlines()[0]}")
            continue
        s = result.summaries[seed]
        lines.append(f"  seed {seed}: {len(s.ran)} ran, {len(s.skipped)} already recorded, {len(s.failed)} failed, "
                     f"{len(s.not_available)} not available")  # fmt: skip
    return "\n".join(lines)
