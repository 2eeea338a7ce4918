"""The few torch.distributed helpers the benchmarks share.

Every helper degrades to the single-process case when torch.distributed is not initialised, so callers never
branch on it. Under ``torchrun`` the process group is expected to be initialised by the caller (the runner does it
with :func:`init_from_env`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def per_rank_batch(global_batch: int, world: int | None = None, what: str = "batch_size") -> int:
    """Each rank's share of a protocol's global batch. One policy for every task: a global batch that does not
    split evenly across the ranks is an error, never a silent change of the protocol's batch."""
    world = world_size() if world is None else int(world)
    if global_batch < 1 or global_batch % world:
        raise ValueError(f"global batch {what}={global_batch} is not divisible by the {world} ranks of this run: "
                         f"use a multiple of {world} (e.g. --cfg-options TASK.{what}=N) or another number of ranks")
    return global_batch // world


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env(device: torch.device | None = None) -> bool:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns whether it did.

    NCCL on CUDA, gloo otherwise. A no-op when already initialised or when run as a single process.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def shard_range(n: int, shard: int | None = None, shards: int | None = None) -> tuple[int, int]:
    """The contiguous ``[start, stop)`` slice of ``n`` items owned by ``shard`` of ``shards`` (near-equal sizes).

    Contiguous slices keep the gathered result in dataset order: rank 0's rows first, then rank 1's, ...
    """
    shard = rank() if shard is None else shard
    shards = world_size() if shards is None else shards
    per = -(-n // shards) if n else 0
    start = min(n, shard * per)
    return start, min(n, start + per)


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along ``dim``, in rank order; sizes along ``dim`` may differ.

    Tensors are padded to the largest size for the collective and trimmed afterwards. NCCL gathers only CUDA
    tensors, so the collective runs on :func:`collective_device` and the result comes back on the input's device.
    """
    if not is_distributed() or world_size() == 1:
        return tensor
    home = tensor.device
    tensor = tensor.to(collective_device()).contiguous()
    size = torch.tensor([tensor.shape[dim]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    longest = max(sizes)
    if tensor.shape[dim] < longest:
        pad_shape = list(tensor.shape)
        pad_shape[dim] = longest - tensor.shape[dim]
        tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
    gathered = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(gathered, tensor)
    return torch.cat([g.narrow(dim, 0, s) for g, s in zip(gathered, sizes)], dim=dim).to(home)


def collective_device() -> torch.device:
    """Where tensors must live for collectives: the current CUDA device under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it); identity in a single process."""
    if is_distributed() and world_size() > 1:
        work = tensor.to(collective_device())
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        if work is not tensor:
            tensor.copy_(work)
    return tensor


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (small picklable values: decisions, paths)."""
    if not is_distributed() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def made_by_main_rank(folder: Path, make: Callable[[], Any], poll_s: float = 5.0) -> Any:
    """``make()`` run by rank 0 only; its JSON-able result on every rank (a single process just calls it).

    For work that must not be repeated by every rank and outlasts any collective's timeout (a ViT-g repair
    takes hours): the ranks agree on a token, then the others poll ``folder`` for rank 0's marker of that token,
    done (with the result) or failed (with the error, raised on every rank so that none waits forever). Whatever
    else ``make`` produces (e.g. a weights file) is in ``folder`` before the done marker is written.
    """
    from sinder.utils.atomic import atomic_write_text

    if not is_distributed() or world_size() == 1:
        return make()
    token = broadcast_object(uuid.uuid4().hex)
    folder = Path(folder)
    done, failed = folder / f".done-{token}.json", folder / f".failed-{token}.txt"
    if is_main():
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob(".done-*.json"), *folder.glob(".failed-*.txt")]:
            if token not in old.name:  # every rank is past the earlier tokens' markers: they wait on this one
                old.unlink(missing_ok=True)
        try:
            result = make()
        except BaseException as err:
            atomic_write_text(failed, f"{type(err).__name__}: {err}")
            raise
        atomic_write_text(done, json.dumps(result))
        return result
    while True:
        if done.is_file():
            return json.loads(done.read_text())
        if failed.is_file():
            raise RuntimeError(f"rank 0 failed the work this rank waits for ({folder}): {failed.read_text()}")
        time.sleep(poll_s)
