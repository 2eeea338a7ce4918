"""What the STEGO and CAUSE training loops share: deterministic batches, gradient averaging, resumable state.

- Batches: each epoch is a permutation of the items seeded by (seed, epoch); step ``s`` of an epoch takes the
  global batch ``perm[s*B:(s+1)*B]`` and rank r trains on its ``[r::world]`` share. Batches and all per-step
  randomness (``step_seed``) depend only on (seed, step), so a resumed run continues exactly where it stopped.
- Data parallel: every rank starts from the same parameters (``broadcast_parameters``) and gradients are averaged
  across ranks (``average_gradients``) before each optimizer step: DDP's arithmetic, without its module wrapper.
- ``Checkpoint``: one file per training stage in the task's work dir (the shared
  :class:`benchmarks.core.checkpointing.TrainingCheckpoint`: atomic, rank 0 writes, tagged with a fingerprint of
  the configuration so a changed config starts fresh instead of resuming a different run).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.core import distributed as D
from benchmarks.core.checkpointing import TrainingCheckpoint, fingerprint


def steps_per_epoch(n_items: int, global_batch: int) -> int:
    """Full batches per epoch (the last partial batch is dropped); one batch when the set is smaller."""
    return max(1, n_items // global_batch)


def global_batch(n_items: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Item indices of the global batch of ``step`` (epochs of seeded permutations, partial batches dropped)."""
    per_epoch = steps_per_epoch(n_items, batch)
    epoch, offset = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(_mix(seed, "epoch", epoch))
    perm = torch.randperm(n_items, generator=generator)
    if n_items < batch:
        return perm
    return perm[offset * batch : (offset + 1) * batch]


def local_share(indices: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch."""
    return indices[D.rank() :: D.world_size()]


def _mix(*parts) -> int:
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_seed(seed: int, stage: str, step: int) -> int:
    """Seed of a step's own randomness (dropout, sampled points, negatives) on this rank."""
    return _mix(seed, stage, step, D.rank())


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (no-op in a single process)."""
    if not D.is_distributed() or D.world_size() == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        work = tensor.data.to(D.collective_device())
        dist.broadcast(work, src=0)
        if work is not tensor.data:
            tensor.data.copy_(work)


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over ranks (missing gradients count as zero)."""
    if not D.is_distributed() or D.world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    D.all_reduce_sum(flat)
    flat /= D.world_size()
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def config_fingerprint(config: dict[str, Any]) -> str:
    return fingerprint(config)


class Checkpoint(TrainingCheckpoint):
    """A stage's resumable state at ``work_dir/name.pt`` (see :mod:`benchmarks.core.checkpointing`); the
    stages save every ``checkpoint_every`` steps themselves and reseed per step, so no RNG state is kept."""

    def __init__(self, work_dir: str | Path | None, name: str, fingerprint: str):
        super().__init__(work_dir, name, fingerprint, every=1)

    def load(self, log=print) -> dict[str, Any] | None:
        self.log = log
        return super().load()


def progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not (enabled and D.is_main()), leave=False)


def eval_shard(n_items: int) -> range:
    """The items of the evaluation set this rank scores (contiguous slices; confusions are summed)."""
    start, stop = D.shard_range(n_items)
    return range(start, stop)


def eval_batches(n_items: int, batch_size: int) -> list[list[int]]:
    """This rank's evaluation items in batches of ``batch_size`` (the last one may be shorter)."""
    shard = list(eval_shard(n_items))
    return [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
