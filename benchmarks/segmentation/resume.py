"""Resuming an mmengine training fast and exactly, from the last checkpoint that is whole.

mmengine resumes model, optimizer, schedulers and iteration, then reaches its place in the data by loading
and discarding every batch already trained on: up to an hour at 40k iterations. Here
:class:`ResumableIterBasedTrainLoop` skips the sampler's indices instead (no image is read) and restores the
random generators that :class:`RNGStateHook` stored in each checkpoint, so the batches and augmentation draws
that follow are those of an uninterrupted run (exactly with ``num_workers=0``; loader workers restart with their
initial seeds, so their draws differ after a resume).

mmengine writes checkpoints in place and then points ``last_checkpoint`` at them; a kill during either write
leaves a truncated file. :func:`resume_point` takes the newest checkpoint that loads.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch
from mmengine.dataset import InfiniteSampler
from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS, LOOPS
from mmengine.runner.loops import IterBasedTrainLoop, _InfiniteDataloaderIterator

from benchmarks.core import distributed as D
from benchmarks.core.checkpointing import gathered_rng_state, restore_rank_rng


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Keeps every rank's generator states in each checkpoint (``meta.rng``) and hands them to the loop.

    mmengine saves checkpoints on rank 0 only, where a collective would wait for the other ranks forever: the
    states are gathered (on every rank) at the end of each iteration whose CheckpointHook saves, before that
    hook runs (this hook's priority is higher), and rank 0 puts them into the checkpoint."""

    priority = "LOW"  # before CheckpointHook (VERY_LOW) in after_train_iter

    def __init__(self):
        self._gathered = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if D.world_size() > 1 and any(_saves_after(hook, runner) for hook in runner.hooks):
            self._gathered = gathered_rng_state()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        rng = gathered_rng_state() if D.world_size() == 1 else self._gathered
        if rng is None:
            raise RuntimeError("RNGStateHook: a checkpoint is saved outside the iterations CheckpointHook saves at")
        checkpoint.setdefault("meta", {})["rng"] = rng
        self._gathered = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        runner.train_loop.resumed_rng = checkpoint.get("meta", {}).get("rng")


def _saves_after(hook, runner) -> bool:
    """Whether ``hook`` is a CheckpointHook that saves after this training iteration (its own test, mmengine
    0.10.7's CheckpointHook.after_train_iter)."""
    if not isinstance(hook, CheckpointHook) or hook.by_epoch:
        return False
    return bool(hook.every_n_train_iters(runner, hook.interval, hook.save_begin)
                or (hook.save_last and hook.is_last_train_iter(runner)))  # fmt: skip


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` whose resume moves the sampler, not the data (see the module docstring)."""

    resumed_rng = None

    def run(self):
        sampler = self.dataloader.sampler
        if not (self._iter > 0 and self.resumed_rng is not None and isinstance(sampler, InfiniteSampler)):
            return super().run()
        # The parent's run() with its data-loading skip replaced by the fast forward (mmengine 0.10.7).
        self.runner.call_hook("before_train")
        self.runner.call_hook("before_train_epoch")
        self._fast_forward(sampler)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(next(self.dataloader_iterator))
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)):  # fmt: skip
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model

    def _fast_forward(self, sampler: InfiniteSampler) -> None:
        # The iterator built in __init__ may already hold indices of the first batches: drop it and restart
        # this rank's index stream past the batches trained on.
        old = getattr(self.dataloader_iterator, "_iterator", None)
        if old is not None and hasattr(old, "_shutdown_workers") and not self.dataloader.persistent_workers:
            old._shutdown_workers()
        sampler.indices = itertools.islice(sampler._indices_of_rank(), self._iter * self.dataloader.batch_size, None)
        self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        restore_rank_rng(self.resumed_rng)


def _loads(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return isinstance(state, dict) and "state_dict" in state and "meta" in state


def resume_point(work_dir: str | Path) -> str | None:
    """The newest checkpoint in ``work_dir`` that loads: ``last_checkpoint``'s target, else ``iter_N.pth`` by
    decreasing N; None when there is none (a fresh start)."""
    work_dir = Path(work_dir)
    candidates = []
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        named = pointer.read_text().strip()
        if named:
            candidates.append(Path(named))
    numbered = [(int(m.group(1)), p) for p in work_dir.glob("iter_*.pth") if (m := re.fullmatch(r"iter_(\d+)\.pth", p.name))]
    candidates += [p for _, p in sorted(numbered, reverse=True)]
    for path in candidates:
        if path.is_file() and _loads(path):
            return str(path)
    return None
