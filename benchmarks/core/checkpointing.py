"""Resumable training state: one file per training, written atomically, tagged with the config it belongs to.

A long training opens a :class:`TrainingCheckpoint` (usually :meth:`TrainingCheckpoint.for_task`), restores
what :meth:`~TrainingCheckpoint.load` returns, and after each iteration saves when :meth:`~TrainingCheckpoint.due`
says so. The state is whatever the training needs to continue exactly: parameters, optimizer and scheduler
state dicts, the iteration, the data position, and :func:`rng_state` (torch, CUDA, numpy and python generators).
Files are read with ``torch.load(weights_only=True)``, so the state holds tensors, numbers, strings, lists and
dicts only. A checkpoint whose fingerprint differs (another config, seed, world size or file format) is ignored
and replaced by the next save, never resumed.

The interval comes from the task config: ``checkpoint_every`` (iterations) and/or ``checkpoint_every_s``
(seconds of training); with neither, every :data:`DEFAULT_EVERY_S` seconds. The last iteration is always saved,
so a task that dies after training (in evaluation) does not train again.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.core import distributed as D
from sinder.utils.atomic import atomic_path, remove_stale_temps
from sinder.utils.hashing import INTERVAL_KEYS, text_sha256, without_intervals  # noqa: F401 (re-exported)

FORMAT = 1  # bump when the layout of saved states changes: older files are then ignored, not misread
DEFAULT_EVERY_S = 300.0


logger = logging.getLogger(__name__)
  # the default line printer (`say`/`log`): the CLI shows INFO on stdout

def task_work_dir(ctx) -> Path | None:
    """The folder a task keeps its training state in (None: no checkpoints). The one place that says where."""
    work_dir = getattr(ctx, "work_dir", None)
    return Path(work_dir) if work_dir else None


def fingerprint(*parts: Any) -> str:
    """A short hash of ``parts`` (configs, seed, world size, ...), blind to the checkpoint interval keys."""
    text = json.dumps([FORMAT, without_intervals(list(parts))], sort_keys=True, default=str)
    return text_sha256(text)[:16]


def module_signature(*modules: torch.nn.Module) -> str:
    """A short hash of the names, shapes and dtypes of ``modules``' state: a checkpoint of a model built
    differently (code changed under the same config) is refused instead of failing in ``load_state_dict``."""
    entries = [[name, list(t.shape), str(t.dtype)] for m in modules for name, t in m.state_dict().items()]
    return text_sha256(json.dumps(entries))[:16]


# ---------------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """This process's generators (torch CPU, CUDA when initialised, numpy legacy global, python ``random``)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32),
                         "pos": n["pos"]}, "has_gauss": n["has_gauss"], "gauss": n["gauss"]})  # fmt: skip
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_rng_state() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a list of one in a single process)."""
    mine = rng_state()
    if not D.is_distributed() or D.world_size() == 1:
        return [mine]
    out: list[Any] = [None] * D.world_size()
    torch.distributed.all_gather_object(out, mine)
    return out


def restore_rank_rng(states: list[dict[str, Any]]) -> None:
    """This rank's entry of :func:`gathered_rng_state`."""
    set_rng_state(states[D.rank() if len(states) > 1 else 0])


# ------------------------------------------------------------------------------------------- files
def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` to ``path`` through a temp file: a kill leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    """A state written by :func:`save_state`, loaded safely (``weights_only=True``) onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=True)


class TrainingCheckpoint:
    """The resumable state of one training at ``folder/name.pt`` (nothing is read or written when ``folder``
    is None). Rank 0 writes; every rank reads (the folder must be shared, as the cache is)."""

    def __init__(self, folder: str | Path | None, name: str, fingerprint: str, *, every: int | None = None,
                 every_s: float | None = None, log: Callable[[str], None] = logger.info):  # fmt: skip
        self.path = Path(folder) / f"{name}.pt" if folder is not None else None
        self.fingerprint = fingerprint
        if every is not None and int(every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1 iteration (got {every})")
        if every_s is not None and float(every_s) <= 0:
            raise ValueError(f"checkpoint_every_s must be > 0 seconds (got {every_s})")
        self.every = int(every) if every is not None else None
        self.every_s = float(every_s) if every_s is not None else (DEFAULT_EVERY_S if every is None else None)
        self.log = log
        self._last = time.monotonic()
        if self.path is not None and D.is_main():
            remove_stale_temps(self.path.parent, recursive=False)  # temps of a save that a kill interrupted

    @classmethod
    def for_task(cls, ctx, name: str, fingerprint: str, config: dict[str, Any] | None = None) -> TrainingCheckpoint:
        """In the task's work folder, with the interval of ``config`` (default: the task config)."""
        config = ctx.config if config is None else config
        return cls(task_work_dir(ctx), name, fingerprint, every=config.get("checkpoint_every"),
                   every_s=config.get("checkpoint_every_s"), log=ctx.log)  # fmt: skip

    def load(self, signature: str | None = None) -> dict[str, Any] | None:
        """The saved state, or None (no file, unreadable, written by another configuration, or, when
        ``signature`` is given, for modules of another :func:`module_signature`)."""
        if self.path is None or not D.broadcast_object(self.path.is_file()):
            return None
        try:
            state = load_state(self.path)
        except Exception as err:  # a damaged or foreign file: train again rather than crash
            self.log(f"checkpoint {self.path} unreadable ({type(err).__name__}: {err}); starting afresh")
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            self.log(f"checkpoint {self.path} is from another configuration; starting afresh (it will be replaced)")
            return None
        if signature is not None and state.get("signature") != signature:
            self.log(f"checkpoint {self.path} holds a differently built model; starting afresh (it will be replaced)")
            return None
        self._last = time.monotonic()
        return state

    def resume(self, key: str, module: torch.nn.Module, optimizer, scheduler) -> dict[str, Any] | None:
        """Restore ``module`` (saved under ``key``), the optimizer, the scheduler and this rank's RNG from the
        state saved for this module's :func:`module_signature`; returns it (for the loop counters), or None."""
        state = self.load(module_signature(module))
        if state is not None:
            module.load_state_dict(state[key])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            restore_rank_rng(state["rng"])
        return state

    def due(self, done: int, total: int) -> bool:
        """Whether to save after ``done`` of ``total`` iterations (the same answer on every rank)."""
        if self.path is None:
            return False
        if done >= total or (self.every is not None and done % self.every == 0):
            return True
        if self.every_s is None:
            return False
        return bool(D.broadcast_object(time.monotonic() - self._last >= self.every_s))

    def save(self, state: dict[str, Any], signature: str | None = None) -> None:
        """Write ``state`` (rank 0, atomically); every rank must call it (it ends with a barrier)."""
        if self.path is None:
            return
        if D.is_main():
            save_state(self.path, {**state, "fingerprint": self.fingerprint, "signature": signature})
        D.barrier()
        self._last = time.monotonic()


# ------------------------------------------------------------------------------------------- wall time
SEGMENTS_FILE = "segments.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth")  # TrainingCheckpoint's files and mmengine's


class SegmentClock:
    """The wall time of one task over the segments of its work: a first run killed or failed, and the ``--resume``
    retries that finish it, so its record states the time the whole result took (not its last segment's).

    The segments live in the task's work dir (``segments.json``). A segment that ended without finishing is
    counted up to the last checkpoint it wrote (what it did after that is done again by the next segment, which
    counts it), or not at all when it wrote none. A finished task's file is removed: its record holds the total.
    Rank 0 only; nothing is kept when the task has no work dir."""

    def __init__(self, work_dir: str | Path | None):
        self.folder = Path(work_dir) if work_dir else None
        self.before = 0.0

    @property
    def path(self) -> Path | None:
        return self.folder / SEGMENTS_FILE if self.folder is not None and D.is_main() else None

    def _last_checkpoint(self) -> float | None:
        times = [p.stat().st_mtime for p in self.folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES and p.is_file()]
        return max(times, default=None)

    def start(self, now: float | None = None) -> float:
        """Open this segment; the seconds of the earlier segments (also :attr:`before`). Never fails the task."""
        now = time.time() if now is None else float(now)
        if self.path is None:
            return 0.0
        try:
            segments = json.loads(self.path.read_text()) if self.path.is_file() else []
            segments = [s for s in segments if isinstance(s, dict) and isinstance(s.get("started"), (int, float))]
            last = self._last_checkpoint()
            for i, seg in enumerate(segments):
                if not isinstance(seg.get("ended"), (int, float)):
                    following = segments[i + 1]["started"] if i + 1 < len(segments) else now
                    seg["ended"] = max(seg["started"], min(last if last is not None else seg["started"], following))
            segments.append({"started": now, "ended": None})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                Path(tmp).write_text(json.dumps(segments))
            self.before = sum(s["ended"] - s["started"] for s in segments[:-1])
        except (OSError, ValueError, TypeError, KeyError) as err:  # the time is a record field, not the work
            logger.warning("wall time of earlier segments not counted (%s: %s)", self.path, err)
            self.before = 0.0
        return self.before

    def finish(self) -> None:
        """The task is done (its record holds the total): forget the segments."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
