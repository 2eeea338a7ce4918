"""DINOv2's linear probe: many linear heads trained at once on one frozen-backbone forward per batch.

Each head sees the class tokens of the last ``n`` blocks (after the final norm), concatenated, optionally with
the mean of the last block's patch tokens ("avgpool"); the grid is n in {1, 4} x avgpool in {False, True} x 13
learning rates = 52 heads. The loss is the sum of the heads' cross-entropies; SGD momentum 0.9, no weight decay,
cosine schedule to 0, learning rates scaled by global batch / 256, weights N(0, 0.01) and zero bias. The head with
the best validation top-1 is reported with its configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from benchmarks.core import distributed as D
from benchmarks.core.checkpointing import (
    TrainingCheckpoint,
    gathered_rng_state,
    module_signature,
)
from benchmarks.core.scalars import ScalarWriter

LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
N_LAST_BLOCKS = (1, 4)
AVGPOOL = (False, True)


@dataclass(frozen=True)
class HeadConfig:
    n_last_blocks: int
    avgpool: bool
    lr: float  # before the batch-size scaling

    @property
    def name(self) -> str:
        return f"blocks{self.n_last_blocks}_avgpool{str(self.avgpool).lower()}_lr{self.lr:g}"


def head_configs(
    n_last_blocks: Sequence[int] = N_LAST_BLOCKS,
    avgpool: Sequence[bool] = AVGPOOL,
    lrs: Sequence[float] = LEARNING_RATES,
) -> list[HeadConfig]:
    return [HeadConfig(n, a, float(lr)) for n in n_last_blocks for a in avgpool for lr in lrs]


def linear_input(tokens: Sequence[tuple[Tensor, Tensor]], n_last_blocks: int, avgpool: bool) -> Tensor:
    """Class tokens of the last ``n_last_blocks`` blocks (+ the mean of the last block's patch tokens)."""
    out = torch.cat([cls for _, cls in tokens[-n_last_blocks:]], dim=-1)
    if avgpool:
        out = torch.cat([out, tokens[-1][0].mean(dim=1)], dim=-1)
    return out.float()


class LinearHeads(nn.Module):
    """One ``nn.Linear`` per :class:`HeadConfig`, all fed from the same backbone tokens."""

    def __init__(self, configs: Sequence[HeadConfig], embed_dim: int, num_classes: int):
        super().__init__()
        self.configs = list(configs)
        self.heads = nn.ModuleList()
        for cfg in self.configs:
            head = nn.Linear(embed_dim * cfg.n_last_blocks + (embed_dim if cfg.avgpool else 0), num_classes)
            nn.init.normal_(head.weight, mean=0.0, std=0.01)
            nn.init.zeros_(head.bias)
            self.heads.append(head)

    def forward(self, tokens: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        inputs: dict[tuple[int, bool], Tensor] = {}  # heads differing only in lr share their input
        outs = []
        for cfg, head in zip(self.configs, self.heads):
            key = (cfg.n_last_blocks, cfg.avgpool)
            if key not in inputs:
                inputs[key] = linear_input(tokens, *key)
            outs.append(head(inputs[key]))
        return outs


def backbone_tokens(backbone: nn.Module, images: Tensor, n_last_blocks: int, amp_dtype=None):
    """The ``(patch tokens, pooled feature)`` pairs of the last ``n_last_blocks`` blocks, after the final norm
    (the pooled feature: the class token, or the attention pool's output: benchmarks.core.preprocessing)."""
    from benchmarks.core.padding import center_pad
    from benchmarks.core.preprocessing import pooled_layers

    autocast = (
        torch.autocast("cuda", dtype=amp_dtype)
        if images.device.type == "cuda" and amp_dtype is not None
        else torch.autocast(images.device.type, enabled=False)
    )
    # no_grad, not inference_mode: the heads' backward must be able to save these tensors.
    with torch.no_grad(), autocast:
        images, _ = center_pad(images, int(backbone.patch_size))  # a crop the patch size does not divide
        tokens = pooled_layers(backbone, images, n=n_last_blocks, norm=True)
    return [(p.float(), c.float()) for p, c in tokens]


def _epoch_indices(n: int, epoch: int, seed: int) -> list[int]:
    # Same permutation on every rank; each rank trains on an equal interleaved share, so every rank runs the
    # same number of steps (the gradient all-reduce would hang otherwise).
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    world = D.world_size()
    return order[: len(order) - len(order) % world][D.rank() :: world]


class SeededSamples(Dataset):
    """``dataset[i]`` drawn under a generator seeded by (seed, epoch, i): a sample's augmentation is the same
    whichever rank, DataLoader worker or resumed run loads it, so N ranks train on the batches one process would."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 2**24 + index) % 2**63)
            return self.dataset[index]


def _data_parallel(heads: nn.Module, device: torch.device) -> nn.Module:
    """``heads`` under DistributedDataParallel when several ranks train (bucketed gradient all-reduce, averaged
    over ranks), else ``heads`` itself."""
    if D.world_size() <= 1:
        return heads
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(heads)
    return DistributedDataParallel(heads, device_ids=[torch.cuda.current_device() if device.index is None else device.index])


@torch.no_grad()
def evaluate_heads(
    backbone: nn.Module,
    heads: LinearHeads,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    amp_dtype=None,
) -> dict[str, dict[str, float]]:
    """Top-1 / top-5 (percent) of every head on ``dataset``; one backbone forward per batch, sharded over ranks."""
    heads.eval()
    n_blocks = max(cfg.n_last_blocks for cfg in heads.configs)
    start, stop = D.shard_range(len(dataset))
    loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, num_workers=num_workers)
    counts = torch.zeros(len(heads.configs), 2, dtype=torch.float64, device=device)  # no per-batch host syncs
    total = torch.zeros(1, dtype=torch.float64)
    for images, labels in loader:
        labels = torch.as_tensor(labels).to(device)
        logits = heads(backbone_tokens(backbone, images.to(device), n_blocks, amp_dtype))
        for i, out in enumerate(logits):
            top = out.topk(min(5, out.shape[1]), dim=1).indices
            counts[i, 0] += (top[:, 0] == labels).sum()
            counts[i, 1] += (top == labels[:, None]).any(dim=1).sum()
        total += labels.numel()
    counts = counts.cpu()
    D.all_reduce_sum(counts)
    D.all_reduce_sum(total)
    acc = (counts / total.clamp(min=1) * 100.0).tolist()
    return {cfg.name: {"top1": a[0], "top5": a[1]} for cfg, a in zip(heads.configs, acc)}


def train_linear_probe(
    backbone: nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    num_classes: int,
    *,
    iterations: int,
    batch_size: int,
    configs: Sequence[HeadConfig] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    eval_batch_size: int | None = None,
    amp_dtype=None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    progress: bool = False,
    checkpoint: TrainingCheckpoint | None = None,
    scalars: ScalarWriter | None = None,
) -> dict:
    """Train every head for ``iterations`` steps of ``batch_size`` images per rank, then evaluate them all.

    With ``checkpoint``, training resumes from its saved state (heads, optimizer, schedule, data position, RNG)
    and saves at its interval: a resumed run ends with the same heads as an uninterrupted one (each sample's
    augmentation is seeded by (seed, epoch, index): :class:`SeededSamples`).

    Under torchrun each rank trains on its interleaved share of every global batch (``batch_size`` per rank) with
    the heads wrapped in DistributedDataParallel: the same heads as one process with ``batch_size x ranks``.

    ``scalars`` (a TensorBoard SummaryWriter, see benchmarks.core.scalars) gets ``train/loss`` (the summed
    loss of the step, this rank's) and ``train/lr`` (the largest head's learning rate; every head follows the
    same cosine) at each step.

    Returns ``{"metrics": {"top1", "top5"}, "hparams": best head's config + scaled lr,
    "heads": {name: {"top1", "top5"}}}``.
    """
    from sinder.utils.progress import progress as progress_bar

    device = torch.device(device)
    configs = list(configs) if configs is not None else head_configs()
    if not configs:
        raise ValueError("the linear probe needs at least one head configuration")
    if iterations < 1 or batch_size < 1:
        raise ValueError(f"iterations ({iterations}) and batch_size ({batch_size}) must be >= 1")
    torch.manual_seed(seed)  # head init and augmentation draws
    embed_dim = int(backbone.embed_dim)
    heads = LinearHeads(configs, embed_dim, num_classes).to(device)
    global_batch = batch_size * D.world_size()
    scale = global_batch / 256.0
    optimizer = torch.optim.SGD(
        [{"params": h.parameters(), "lr": cfg.lr * scale} for cfg, h in zip(configs, heads.heads)],
        momentum=momentum,
        weight_decay=weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=0.0)
    n_blocks = max(cfg.n_last_blocks for cfg in configs)

    heads.train()
    trained = _data_parallel(heads, device)
    step, epoch, offset = 0, 0, 0  # offset: batches of this epoch already trained on
    signature = module_signature(heads)
    state = checkpoint.resume("heads", heads, optimizer, scheduler) if checkpoint is not None else None
    if state is not None:
        step, epoch, offset = int(state["step"]), int(state["epoch"]), int(state["offset"])
    bar = progress_bar(total=iterations, initial=step, desc="linear probe", enabled=bool(progress))
    while step < iterations:
        local = _epoch_indices(len(train_dataset), epoch, seed)
        drop_last = len(local) >= batch_size
        n_batches = len(local) // batch_size if drop_last else -(-len(local) // batch_size)
        loader = DataLoader(
            Subset(SeededSamples(train_dataset, seed, epoch), local[offset * batch_size :]), batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers, drop_last=drop_last,
            # Its own generator: the loader's seed draw must not move the global RNG the augmentations use
            # (a resumed epoch would otherwise see other draws).
            generator=torch.Generator().manual_seed(seed * 100003 + epoch),
        )
        for images, labels in loader:
            tokens = backbone_tokens(backbone, images.to(device), n_blocks, amp_dtype)
            labels = torch.as_tensor(labels).to(device)
            loss = sum(F.cross_entropy(out, labels) for out in trained(tokens))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP: gradients averaged over ranks, as one process on the global batch
            optimizer.step()
            if scalars is not None:
                scalars.add_scalar("train/loss", loss.item(), step)
                scalars.add_scalar("train/lr", max(group["lr"] for group in optimizer.param_groups), step)
            scheduler.step()
            step += 1
            offset += 1
            bar.update(1)
            if checkpoint is not None and checkpoint.due(step, iterations):
                ended = offset >= n_batches
                checkpoint.save({
                    "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch + int(ended),
                    "offset": 0 if ended else offset, "rng": gathered_rng_state(),
                }, signature)  # fmt: skip
            if step >= iterations:
                break
        else:
            epoch, offset = epoch + 1, 0
    bar.close()
    # Epochs trained on, a partly trained last one included; also right when resuming from the final checkpoint.
    epochs_seen = epoch + (1 if offset else 0)

    results = evaluate_heads(
        backbone, heads, val_dataset, batch_size=eval_batch_size or batch_size, device=device,
        num_workers=num_workers, amp_dtype=amp_dtype,
    )
    best_cfg = max(configs, key=lambda c: results[c.name]["top1"])  # first best wins ties (max is stable)
    best = results[best_cfg.name]
    hparams = {
        **asdict(best_cfg),
        "head": best_cfg.name,
        "lr_scaled": best_cfg.lr * scale,
        "global_batch": global_batch,
        "batch_per_rank": batch_size,
        "world_size": D.world_size(),
        "iterations": iterations,
        "epochs_seen": epochs_seen,
    }
    return {"metrics": {"top1": best["top1"], "top5": best["top5"]}, "hparams": hparams, "heads": results}
