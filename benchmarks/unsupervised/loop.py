"""What the STEGO and CAUSE training loops share: deterministic batches, gradient averaging, resumable state.

- Batches: each epoch is a permutation of the items seeded by (seed, epoch); step ``s`` of an epoch takes the
  global batch ``perm[s*B:(s+1)*B]`` (with ``keep_partial``, as a DataLoader without drop_last, the epoch's last
  batch holds the remaining items) and rank r trains on its ``[r::world]`` share. Batches and all per-step
  randomness (``step_seed``) depend only on (seed, step), so a resumed run continues exactly where it stopped.
- Data parallel: every rank starts from the same parameters (``broadcast_parameters``) and gradients are averaged
  across ranks (``average_gradients``) before each optimizer step: DDP's arithmetic, without its module wrapper.
- Same numbers as one process: a step's random numbers are drawn for the whole global batch from a generator
  that depends on (seed, stage, step) only, and each rank keeps its rows (``StepNoise``); what a loss compares
  across the batch is gathered (``gather_batch``, whose backward sums the other ranks' gradients back), and a
  mean whose count differs between ranks is weighted by the global count (``share_of_mean``). Each rank's loss
  is then ``W x`` its share of the one-process loss, so the average of the ranks' gradients is its gradient.
- ``Checkpoint``: one file per training stage in the task's work dir (the shared
  :class:`benchmarks.core.checkpointing.TrainingCheckpoint`: atomic, rank 0 writes, tagged with a fingerprint of
  the configuration so a changed config starts fresh instead of resuming a different run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.core import distributed as D
from benchmarks.core.checkpointing import TrainingCheckpoint, fingerprint
from sinder.utils.hashing import new_digest


def partial_batch_dropped(n_items: int, global_batch: int) -> str | None:
    """Why an epoch's last, smaller batch cannot be trained on by this run (None when it can): a share of it for
    every rank needs as many items as ranks (a rank without items would leave the others waiting in the
    collectives), so a remainder smaller than the number of ranks is dropped."""
    remainder, world = n_items % global_batch, D.world_size()
    if n_items < global_batch or remainder == 0 or remainder >= world:
        return None
    return (f"each epoch's last batch ({remainder} of {n_items} items) is dropped: fewer items than the {world} "
            "ranks (the reference trains on it)")


def steps_per_epoch(n_items: int, global_batch: int, keep_partial: bool = False) -> int:
    """Batches per epoch: full batches only (the last partial batch dropped) or, with ``keep_partial`` (a
    DataLoader without drop_last), ceil(n / batch) unless that batch has fewer items than ranks
    (:func:`partial_batch_dropped`); one batch when the set is smaller."""
    if keep_partial and partial_batch_dropped(n_items, global_batch) is None:
        return max(1, math.ceil(n_items / global_batch))
    return max(1, n_items // global_batch)


def global_batch(n_items: int, batch: int, step: int, seed: int, epoch_items: int | None = None,
                 keep_partial: bool = False) -> torch.Tensor:  # fmt: skip
    """Item indices of the global batch of ``step`` (epochs of seeded permutations).

    ``epoch_items``: an epoch visits only that many items (the first of its permutation: a random share of the
    set, as one process of a DistributedSampler sees); default all. ``keep_partial``: the epoch's last batch
    holds its remaining items (fewer than ``batch``); otherwise they are dropped."""
    epoch_items = n_items if epoch_items is None else max(1, min(int(epoch_items), n_items))
    per_epoch = steps_per_epoch(epoch_items, batch, keep_partial)
    epoch, offset = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(_mix(seed, "epoch", epoch))
    perm = torch.randperm(n_items, generator=generator)
    if epoch_items < batch:
        return perm[:epoch_items]
    return perm[offset * batch : min((offset + 1) * batch, epoch_items)]


def local_share(indices: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch."""
    return indices[D.rank() :: D.world_size()]


def _mix(*parts) -> int:
    digest = new_digest(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_seed(seed: int, stage: str, step: int) -> int:
    """Seed of the torch RNG of a step on this rank (a guard: the training draws through :class:`StepNoise`)."""
    return _mix(seed, stage, step, D.rank())


def batch_seed(seed: int, stage: str, step: int) -> int:
    """Seed of a step's randomness drawn for its whole global batch: the same on every rank."""
    return _mix(seed, stage, step, "global")


def share_positions(n_global: int) -> torch.Tensor:
    """Positions in a global batch of ``n_global`` items of this rank's share (:func:`local_share`)."""
    return torch.arange(n_global)[D.rank() :: D.world_size()]


class StepNoise:
    """The random numbers of one training step, drawn for the whole global batch of ``n_global`` items and cut to
    this rank's rows, so W ranks train on exactly the numbers one process draws.

    Every rank makes the same calls with the same global shapes, so the generator stays in step on all ranks.
    """

    def __init__(self, seed: int, stage: str, step: int, n_global: int, device):
        self.device = torch.device(device)
        self.n_global = int(n_global)
        self.generator = torch.Generator(device=self.device).manual_seed(batch_seed(seed, stage, step))
        self.rows = slice(D.rank(), None, D.world_size())

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) numbers for this rank's items: (local batch, *shape)."""
        full = torch.rand((self.n_global, *shape), generator=self.generator, device=self.device)
        return full[self.rows]

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        full = torch.randint(high, (self.n_global, *shape), generator=self.generator, device=self.device)
        return full[self.rows]

    def randperm(self, n: int | None = None) -> torch.Tensor:
        """A permutation of ``n`` (default: the global batch's positions), the same on every rank."""
        return torch.randperm(self.n_global if n is None else n, generator=self.generator, device=self.device)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's term of the mean of ``x`` over the global batch (first dimension: this rank's items,
        each with as many values): W x the rank's sum / the global count, so the ranks' terms average to the
        one-process mean, even when the shares differ in size."""
        local = x.shape[0]
        if local == 0:
            return x.sum() * 0.0
        per_item = x.numel() // local
        return x.sum() * (D.world_size() / (self.n_global * per_item))

    def dropout(self, x: torch.Tensor, p: float, channels: bool = False) -> torch.Tensor:
        """Inverted dropout of ``x`` (first dimension: this rank's items); ``channels``: whole channels of a
        B x C x ... map (Dropout2d)."""
        if p <= 0:
            return x
        shape = x.shape[1:2] + (1,) * (x.dim() - 2) if channels else x.shape[1:]
        keep = self.rand(*shape) >= p
        return x * keep.to(x.dtype) / (1 - p)


class BatchDropout(torch.nn.Dropout):
    """``nn.Dropout`` whose masks come from ``self.noise`` (a :class:`StepNoise`, set by :func:`noise_of`) while
    one is set, from the torch RNG otherwise. No state: a state dict is the same as with ``nn.Dropout``."""

    noise: StepNoise | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.noise is not None:
            return self.noise.dropout(x, self.p)
        return super().forward(x)


class noise_of:
    """``with noise_of(module, noise):`` every :class:`BatchDropout` in ``module`` draws from ``noise``."""

    def __init__(self, module: torch.nn.Module, noise: StepNoise | None):
        self.drops = [m for m in module.modules() if isinstance(m, BatchDropout)]
        self.noise = noise

    def __enter__(self):
        for m in self.drops:
            m.noise = self.noise
        return self.noise

    def __exit__(self, *exc):
        for m in self.drops:
            m.noise = None


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, n_global: int) -> torch.Tensor:
        world = D.world_size()
        gathered = D.all_gather_cat(x.detach().contiguous())  # rank 0's rows, then rank 1's, ...
        order = torch.cat([torch.arange(r, n_global, world) for r in range(world)]).to(x.device)
        out = torch.empty_like(gathered)
        out[order] = gathered
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # every rank's loss may read this rank's rows: their gradients are summed here
        grad = D.all_reduce_sum(grad.contiguous().clone())
        return grad[D.rank() :: D.world_size()], None


def gather_batch(x: torch.Tensor, n_global: int) -> torch.Tensor:
    """The global batch (in its order) of the per-rank shares ``x``; gradients flow back to each rank's rows,
    summed over the ranks whose losses used them. ``x`` itself in a single process."""
    if not D.is_distributed() or D.world_size() == 1:
        return x
    return _GatherBatch.apply(x, int(n_global))


def share_of_mean(total: torch.Tensor, count) -> torch.Tensor:
    """This rank's term of a mean over the global batch: ``total`` (the rank's sum) x W / the global count.

    The ranks' terms average to the one-process mean whatever each rank's count (labelled pixels, positive
    pairs), so averaged gradients are the one-process gradient. ``total`` x 0 when nothing is counted."""
    count = torch.as_tensor(count, dtype=torch.float64).reshape(1).clone()
    all_count = float(D.all_reduce_sum(count).item())
    if all_count == 0:
        return total * 0.0
    return total * (D.world_size() / all_count)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over all ranks' elements (no gradient: for constants such as a batch-wide centring)."""
    if not D.is_distributed() or D.world_size() == 1:
        return x.mean()
    sums = torch.stack([x.detach().sum().double(), x.new_tensor(float(x.numel()), dtype=torch.float64)])
    sums = D.all_reduce_sum(sums)
    return (sums[0] / sums[1]).to(x.dtype)


class LossSums:
    """The running loss sums of a training, kept in its checkpoint so that a resumed training reports the mean
    over every step since step 0, as an uninterrupted one does (not over its last segment). ``since``: the step the
    sums start at (0; a checkpoint written before the sums were kept gives its own step)."""

    def __init__(self, sums: dict[str, float] | None = None, since: int = 0):
        self.sums, self.since = dict(sums or {}), int(since)

    @classmethod
    def restore(cls, state: dict, step: int) -> LossSums:
        if "loss_sums" not in state:
            return cls(since=step)
        return cls({str(k): float(v) for k, v in state["loss_sums"].items()}, int(state.get("loss_sums_since", 0)))

    def state(self, sums: dict[str, float]) -> dict:
        """What the checkpoint stores: the sums averaged over ranks (every rank calls this, as it calls
        :func:`averaged_stats`; each rank resumes from the average, so the next average is still right), as
        python floats, so in one process the sum continues bit for bit after a resume."""
        if D.world_size() > 1 and sums:
            values = D.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64)) / D.world_size()
            sums = dict(zip(sums, values.tolist(), strict=True))
        return {"loss_sums": {k: float(v) for k, v in sums.items()}, "loss_sums_since": self.since}


def averaged_stats(sums: dict[str, float], steps: int, prefix: str) -> dict[str, float]:
    """Per-step means of the summed loss values, averaged over ranks (each rank's value is W x its share)."""
    if not sums:
        return {}
    values = D.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64)) / D.world_size()
    return {f"{prefix}{k}": float(v) / max(1, steps) for k, v in zip(sums, values.tolist())}


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
    from sinder.utils.progress import progress

    return progress(total=total, initial=initial, desc=desc, enabled=bool(enabled))


def eval_shard(n_items: int) -> range:
    """The items of the evaluation set this rank scores (contiguous slices; confusions are summed)."""
    start, stop = D.shard_range(n_items)
    return range(start, stop)


def eval_batches(n_items: int, batch_size: int) -> list[list[int]]:
    """This rank's evaluation items in batches of ``batch_size`` (the last one may be shorter)."""
    shard = list(eval_shard(n_items))
    return [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
