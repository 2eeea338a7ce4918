"""What a suite run tells its user: task k of N, time elapsed, an estimate of the time left, short result lines.

The estimate sums, over the tasks still to run, the wall time each is expected to take: its median in earlier
records of the same profile in the output folder, else its measured smoke time (``workers.SMOKE_SECONDS``, given by
the runner for profile smoke), else the mean of the tasks finished in this run (never the first guess: the
longest run first, so an early mean overstates the rest). A task already running counts only what it has left.
With ``parallel`` pairs running at once (``run --jobs``, at most the cores' worth), that sum is shared among them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping

HEADLINE_METRICS = 3  # a result line shows at most this many metrics; the record holds all of them


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def expected_durations(records: Iterable[Mapping], profile: str) -> dict[str, float]:
    """Task name -> median wall time (s) of earlier records of ``profile``."""
    times: dict[str, list[float]] = {}
    for record in records:
        wall = record.get("wall_time_s")
        if record.get("error"):  # a failed task's time says nothing about a full run of it
            continue
        if record.get("profile") == profile and isinstance(wall, (int, float)) and wall >= 0:
            times.setdefault(record.get("task", ""), []).append(float(wall))
    return {task: statistics.median(values) for task, values in times.items()}


class SuiteProgress:
    """Counts the (backbone, task) pairs of one run and formats the ``[k/N ...]`` prefix of its lines."""

    def __init__(self, tasks: list[str], expected: Mapping[str, float] | None = None,
                 clock: Callable[[], float] = time.monotonic, parallel: int = 1):  # fmt: skip
        self.pending = list(tasks)  # task names still to run, in order (one entry per backbone)
        self.total = len(tasks)
        self.expected = dict(expected or {})
        self.clock = clock
        self.start = clock()
        self.finished: list[float] = []
        self.parallel = max(1, int(parallel))
        self.running: list[tuple[str, float]] = []  # (task, when it started) of the pairs running now

    def started(self, task: str) -> None:
        """Mark one pair of ``task`` running: the estimate then counts only what it has left."""
        self.running.append((task, self.clock()))

    @property
    def index(self) -> int:
        """1-based number of the task now running (or about to)."""
        return min(self.total, self.total - len(self.pending) + 1)

    def remaining_estimate(self) -> float | None:
        """Seconds the pending tasks should take, or None before anything is known."""
        mean = statistics.fmean(self.finished) if self.finished else None
        now = self.clock()
        running = list(self.running)
        guesses = []
        for task in self.pending:
            guess = self.expected.get(task, mean)
            if guess is None:
                return None
            match = next((r for r in running if r[0] == task), None)
            if match is not None:  # running: what it has left (at least a second: it has not finished)
                running.remove(match)
                guess = max(1.0, guess - (now - match[1]))
            guesses.append(guess)
        # Shared among the workers, but never less than the longest pending task.
        return max(sum(guesses) / self.parallel, max(guesses, default=0.0))

    def prefix(self, index: int | None = None, word: str = "") -> str:
        """``[k/N | elapsed, about T left]``; k is the task now running, or ``index`` (e.g. the pairs finished),
        followed by ``word`` when given (``[3/28 started | ...]``)."""
        elapsed = format_duration(self.clock() - self.start)
        left = self.remaining_estimate()
        estimate = f", about {format_duration(left)} left" if left is not None else ""
        what = f" {word}" if word else ""
        return f"[{self.index if index is None else index}/{self.total}{what} | {elapsed} elapsed{estimate}]"

    def done(self, task: str, seconds: float | None) -> None:
        """Mark the first pending ``task`` finished (``seconds`` None: skipped, not counted in the mean)."""
        if task in self.pending:
            self.pending.remove(task)
        match = next((r for r in self.running if r[0] == task), None)
        if match is not None:
            self.running.remove(match)
        if seconds is not None:
            self.finished.append(float(seconds))


def headline(metrics: Mapping[str, float], names: Iterable[str], limit: int = HEADLINE_METRICS) -> str:
    """``miou=41.2 aacc=80.1`` for the first ``limit`` of ``names`` present in ``metrics`` (+N more)."""
    shown = [name for name in dict.fromkeys(names) if name in metrics]
    text = " ".join(f"{name}={metrics[name]:.4g}" for name in shown[:limit])
    rest = len(metrics) - min(limit, len(shown))
    return f"{text} (+{rest} more in the record)" if rest > 0 and text else text


def where_next(out: str, summary_path: str | None, written: int, elapsed: float | None = None) -> str:
    """The closing lines of a run: where its records are and the command that turns them into tables."""
    took = f" in {format_duration(elapsed)}" if elapsed is not None else ""
    lines = [f"records: {written} written{took} under {out}/<task>/"]
    if summary_path:
        lines.append(f"summary: {summary_path}")
    lines.append(f"next:    sinder-bench report --runs {out}    (tables beside the paper's, into results/tables/)")
    return "\n".join(lines)
