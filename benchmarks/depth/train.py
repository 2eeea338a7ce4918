"""Train a depth head on a frozen backbone and evaluate it at full resolution with flip averaging.

One loop for every head: features of the selected blocks (inference mode) -> head -> depth at feature
resolution -> bilinear to the crop -> SigLoss + gradient loss -> AdamW with warmup + cosine, gradients
clipped. Under torchrun each rank trains on its slice of every global batch (:class:`GlobalBatches`: the
same images and augmentation draws whatever the number of ranks), the head is wrapped in DDP, and the test
images are sharded with their metric sums all-reduced. The loss is the mean of per-group losses over groups of
``loss_group`` images (DINOv2's 2 images per GPU), so one process and N processes compute the same gradient.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, Subset

from benchmarks.core import distributed as D
from benchmarks.core.checkpointing import (
    INTERVAL_KEYS,
    TrainingCheckpoint,
    gathered_rng_state,
    module_signature,
)
from benchmarks.core.padding import center_pad
from benchmarks.core.preprocessing import preprocessing_of
from benchmarks.core.scalars import ScalarWriter
from benchmarks.core.task_config import check_schema
from benchmarks.depth.features import backbone_features, head_blocks
from benchmarks.depth.heads import build_head
from benchmarks.depth.losses import GRADIENT_LOSSES, gradient_loss, gradient_loss_reference, sig_loss
from benchmarks.depth.metrics import MetricAverager, image_metrics
from benchmarks.depth.transforms import COLOUR_AUGS, AugmentedNYU, TestNYU, TrainTransform


@dataclass
class DepthConfig:
    """DINOv2's NYU Depth v2 protocol (protocols.md; max_depth 10 m, not the hub heads' 80): these defaults are
    the ``paper`` profile's values, which the profiles YAML do not repeat (DepthConfig.protocol)."""

    head: str = "linear4"  # linear1 | linear4 | dpt
    iterations: int = 38400
    warmup: int = 12800
    batch_size: int = 16  # global
    # Images per loss evaluation: DINOv2 trains on 8 GPUs x 2 images and computes SigLoss and the gradient loss
    # per GPU (DDP averages the gradients), so the loss is the mean over groups of this many images.
    loss_group: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 35.0
    crop: tuple[int, int] = (416, 544)
    min_depth: float = 1e-3
    max_depth: float = 10.0
    n_bins: int = 256
    upsample: int = 4  # linear heads: feature maps upsampled x4 before the 1x1 conv
    dpt_channels: int = 256
    sig_weight: float = 1.0
    grad_weight: float = 0.5
    sig_warmup_iters: int = 0  # iterations of the mean-only SigLoss (toolbox option; off in the protocol)
    flip_eval: bool = True
    eval_images: int = 0  # 0: the whole test split
    # Training signal and evaluation as DINOv2's code computes them ("reference"), or our reading; see
    # losses.gradient_loss_reference, transforms.colour_augment, predict and metrics.image_metrics.
    gradient_loss: str = "reference"  # reference (over batch/channel axes, as DINOv2's) | spatial (per image)
    colour_aug: str = "reference"  # reference (on 0-255, clip at 255) | unit (on [0, 1])
    eval_resize: str = "reference"  # reference (clamp, resize the padded frame's map to GT) | unpad (cut padding)
    eval_valid_gt: str = "reference"  # reference: min < gt < max (the toolbox) | inclusive: min < gt <= max
    autocast: str = "float16"  # the backbone's CUDA autocast dtype (applied by the runner: ctx.amp_dtype)
    # DPT's regression readout relu(x) + min_depth is dead from the start (no gradient ever) when PyTorch's
    # default init makes x < 0 everywhere, about one seed in two on small heads; "positive_readout" starts the
    # last conv's bias at 1 so every pixel is alive.
    head_init: str = "reference"  # reference | positive_readout
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def protocol(cls) -> dict[str, Any]:
        """The values every depth profile starts from, as a resolved profile holds them (lists for tuples):
        every field but the head (each task's), ``extra`` and PROFILE_OPTIONAL."""
        skip = {"head", "extra", *PROFILE_OPTIONAL}
        return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                for f in dataclasses.fields(cls) if f.name not in skip}  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DepthConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        values = {k: v for k, v in values.items() if k not in INTERVAL_KEYS}  # the checkpoint's, not the loop's
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown depth config keys {unknown}; known: {sorted(known)}")
        check_schema(cls, values, "depth config", RANGES)
        values = dict(values)
        if "crop" in values:
            values["crop"] = tuple(int(v) for v in values["crop"])
        cfg = cls(**values)
        if not cfg.max_depth > cfg.min_depth:
            raise ValueError(f"depth config: max_depth={cfg.max_depth} must exceed min_depth={cfg.min_depth}")
        for key, allowed in SWITCHES.items():
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"depth config {key}={getattr(cfg, key)!r}: use one of {', '.join(allowed)}")
        return cfg

    def deviations(self) -> list[str]:
        """The switches set away from the reference, as ``key=value``."""
        return [f"{key}={getattr(self, key)}" for key in SWITCHES if getattr(self, key) != "reference"]


# The range of each number a profile may set (inclusive; None: no bound); types come from DepthConfig's fields.
RANGES = {"iterations": (1, None), "warmup": (0, None), "batch_size": (1, None), "loss_group": (1, None),
          "lr": (0, None), "weight_decay": (0, None), "grad_clip": (0, None), "crop": (1, None),
          "min_depth": (0, None), "max_depth": (0, None), "n_bins": (1, None), "upsample": (1, None),
          "dpt_channels": (1, None), "sig_weight": (0, None), "grad_weight": (0, None), "sig_warmup_iters": (0, None),
          "eval_images": (0, None)}  # fmt: skip
# Fields a profile holds only when it sets them (an override may add eval_images: the depth tasks' optional_keys).
PROFILE_OPTIONAL = ("sig_warmup_iters", "eval_images")
SWITCHES = {"gradient_loss": GRADIENT_LOSSES, "colour_aug": tuple(COLOUR_AUGS), "eval_resize": ("reference", "unpad"),
            "eval_valid_gt": ("reference", "inclusive"), "head_init": ("reference", "positive_readout")}


def make_head(cfg: DepthConfig, embed_dim: int) -> nn.Module:
    head = build_head(cfg.head, embed_dim, min_depth=cfg.min_depth, max_depth=cfg.max_depth,
                      channels=cfg.dpt_channels, n_bins=cfg.n_bins, upsample=cfg.upsample)  # fmt: skip
    if cfg.head_init == "positive_readout" and cfg.head == "dpt":
        nn.init.constant_(head.conv_depth.head[-1].bias, 1.0)
    return head


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup from 0 to 1 over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def depth_loss(pred: Tensor, target: Tensor, cfg: DepthConfig, step: int) -> Tensor:
    sig = sig_loss(pred, target, cfg.max_depth, mean_only=step < cfg.sig_warmup_iters)
    grad = gradient_loss_reference if cfg.gradient_loss == "reference" else gradient_loss
    return cfg.sig_weight * sig + cfg.grad_weight * grad(pred, target, cfg.max_depth)


def grouped_depth_loss(pred: Tensor, target: Tensor, cfg: DepthConfig, step: int, group: int | None = None) -> Tensor:
    """The mean of :func:`depth_loss` over consecutive groups of ``group`` images (default ``cfg.loss_group``):
    the loss a GPU of the reference computes on its images, averaged over GPUs as DDP averages their gradients
    (an epoch's last batch holds fewer images per GPU: :meth:`GlobalBatches.group_of`)."""
    group = cfg.loss_group if group is None else int(group)
    groups = [depth_loss(p, t, cfg, step) for p, t in zip(pred.split(group), target.split(group))]
    return torch.stack(groups).mean()


class GlobalBatches(Sampler):
    """This rank's slice of every global batch from step ``start`` on, as lists of (dataset index, seed).

    The reference (the depth toolbox's mmcv 1.x IterBasedRunner, ``samples_per_gpu`` = ``group`` images on each
    of ``global_batch / group`` GPUs) iterates epochs of torch's DistributedSampler (shuffle, drop_last False): an
    epoch's seeded permutation of the n items, padded with its own first items to a multiple of the GPUs, GPU r
    taking positions r, r + R, r + 2R, ... (R GPUs); each GPU's DataLoader (no drop_last) cuts its
    ceil(n / R) items into batches of ``group``, the last one smaller. Step s's global batch is the s-th batch of
    every GPU, GPU by GPU (so consecutive ``group_of(s)`` images are one GPU's); the permutation is seeded by
    (seed, epoch) and each image's augmentation seed by (seed, s). Rank r of this run takes the r-th contiguous
    slice (whole GPU groups: R is a multiple of the ranks). Any number of ranks (and of loader workers) then
    trains on the same images with the same augmentation draws, and a resumed run starts at its step without
    replaying the draws before it."""

    def __init__(self, n: int, global_batch: int, seed: int, start: int = 0, rank: int | None = None,
                 world: int | None = None, group: int = 1):  # fmt: skip
        self.n, self.global_batch, self.seed, self.start = int(n), int(global_batch), int(seed), int(start)
        self.group = int(group)
        if self.group < 1 or self.global_batch % self.group:
            raise ValueError(f"global batch {global_batch} is not a multiple of the per-GPU group {group}")
        self.replicas = self.global_batch // self.group
        self.world = D.world_size() if world is None else int(world)
        self.rank = D.rank() if rank is None else int(rank)
        D.per_rank_batch(self.global_batch, self.world)
        if self.replicas % self.world:
            raise ValueError(f"the {self.replicas} reference GPUs (batch {global_batch} / {group}) do not split over "
                             f"{self.world} ranks")  # fmt: skip
        self.per_gpu = math.ceil(self.n / self.replicas)  # DistributedSampler.num_samples
        self.steps_per_epoch = math.ceil(self.per_gpu / self.group)
        self._epoch: tuple[int, np.ndarray] | None = None

    def padded_permutation(self, epoch: int) -> np.ndarray:
        """The epoch's shuffled indices padded to R x ceil(n / R) with their own first ones."""
        if self._epoch is None or self._epoch[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch, 0xE90C]).permutation(self.n)
            pad = self.replicas * self.per_gpu - self.n
            perm = np.concatenate([perm, np.resize(perm, pad)]) if pad else perm
            self._epoch = (epoch, perm)
        return self._epoch[1]

    def group_of(self, step: int) -> int:
        """Images per GPU in ``step``'s batch: ``group``, fewer in an epoch's last batch."""
        offset = step % self.steps_per_epoch
        return min(self.group, self.per_gpu - offset * self.group)

    def draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole global batch of ``step``: (indices, augmentation seeds), GPU by GPU."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        perm = self.padded_permutation(epoch)
        per_gpu = np.arange(offset * self.group, offset * self.group + self.group_of(step))
        positions = (np.arange(self.replicas)[:, None] + self.replicas * per_gpu[None, :]).reshape(-1)
        rng = np.random.default_rng([self.seed, step])
        return perm[positions], rng.integers(0, 2**63 - 1, len(positions))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while True:
            indices, seeds = self.draw(step)
            per_rank = len(indices) // self.world
            lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
            yield [(int(i), int(s)) for i, s in zip(indices[lo:hi], seeds[lo:hi])]
            step += 1


def predict(backbone: nn.Module, head: nn.Module, images: Tensor, blocks: list[int], resize: str = "reference",
            amp_dtype: torch.dtype | None = None) -> Tensor:  # fmt: skip
    """(B, 1, H, W) depth for (B, 3, H, W) normalized images (center-padded to the patch size for the backbone).

    ``reference`` (DINOv2's encode_decode): the head's map clamped to [min_depth, max_depth] and resized as a
    whole, padding included, to the image size. ``unpad``: resized to the padded input, then the padding cut."""
    padded, (top, bottom, left, right) = center_pad(images, int(backbone.patch_size))
    depth = head(backbone_features(backbone, padded, blocks, amp_dtype))
    if resize == "reference":
        depth = depth.clamp(head.min_depth, head.max_depth)
        return F.interpolate(depth, size=images.shape[-2:], mode="bilinear", align_corners=False)
    if resize != "unpad":
        raise ValueError(f"unknown eval_resize {resize!r}; use reference or unpad")
    depth = F.interpolate(depth, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return depth[..., top : padded.shape[-2] - bottom, left : padded.shape[-1] - right]


def _on_every_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (the same answer everywhere)."""
    value = torch.tensor([float(flag)])
    if D.is_distributed():
        value = value.to(D.collective_device())
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item() > 0)


def train_head(backbone: nn.Module, train_set, cfg: DepthConfig, *, device: torch.device, seed: int = 0,
               num_workers: int = 0, log=None, checkpoint: TrainingCheckpoint | None = None,
               amp_dtype: torch.dtype | None = None, scalars: ScalarWriter | None = None) -> nn.Module:  # fmt: skip
    """Train a fresh head of ``cfg.head`` on ``train_set`` (a ``NYUDepthV2`` split); returns it (eval mode).

    With ``checkpoint``, training resumes from its saved state (head, optimizer, schedule, step) and saves at
    its interval; the resumed head equals the uninterrupted one (the data stream is a function of the step:
    :class:`GlobalBatches`). ``scalars`` (a TensorBoard SummaryWriter, see benchmarks.core.scalars) gets
    ``train/loss`` (this rank's; a non-finite step's is logged too, and skipped) and ``train/lr`` at each step."""
    per_rank = D.per_rank_batch(cfg.batch_size)
    if cfg.loss_group < 1 or per_rank % cfg.loss_group:
        raise ValueError(f"depth: each rank's batch ({per_rank} = batch_size {cfg.batch_size} / {D.world_size()} "
                         f"ranks) must be a multiple of loss_group={cfg.loss_group}: change batch_size, the "
                         "number of ranks or loss_group (--cfg-options TASK.loss_group=N)")  # fmt: skip
    blocks = head_blocks(cfg.head, len(backbone.blocks))
    torch.manual_seed(seed)
    head = make_head(cfg, int(backbone.embed_dim)).to(device)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.iterations))
    start, skipped = 0, 0
    signature = module_signature(head)
    state = checkpoint.resume("head", head, optimizer, scheduler) if checkpoint is not None else None
    if state is not None:
        start, skipped = int(state["step"]), int(state["skipped"])
    pre = preprocessing_of(backbone)
    dataset = AugmentedNYU(train_set, TrainTransform(crop=cfg.crop, colour_aug=cfg.colour_aug, mean=pre.mean,
                                                     std=pre.std))  # fmt: skip
    sampler = GlobalBatches(len(dataset), cfg.batch_size, seed, start, group=cfg.loss_group)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers)
    batches = iter(loader)
    groups = cfg.batch_size // cfg.loss_group  # loss groups of the global batch: the reference's GPUs
    wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    head.train()
    for step in range(start, cfg.iterations):
        images, depth = next(batches)
        images, depth = images.to(device, non_blocking=True), depth.to(device, non_blocking=True)
        # One group of loss_group images at a time (the same shapes whatever the number of ranks), each group's
        # gradient added in float64 on its rank and the ranks' sums all-reduced in float64: the float32 gradient
        # is then the same for 1 and N processes up to a rare rounding tie (DDP's float32 all-reduce adds in
        # another order than one process, which 150 AdamW steps grew to 1e-3 relative; issue 24).
        total = [torch.zeros(p.shape, dtype=wide, device=device) for p in params]
        losses, dead = [], True
        group = sampler.group_of(step)  # an epoch's last batch holds fewer images per reference GPU
        for image_g, depth_g in zip(images.split(group), depth.split(group)):
            pred = head(backbone_features(backbone, image_g, blocks, amp_dtype))
            dead = dead and bool((pred.detach() <= cfg.min_depth).all())
            pred = F.interpolate(pred, size=depth_g.shape[-2:], mode="bilinear", align_corners=False)
            loss_g = depth_loss(pred, depth_g, cfg, step)
            for acc, grad in zip(total, torch.autograd.grad(loss_g, params, allow_unused=True)):
                if grad is not None:
                    acc += grad.to(wide)
            losses.append(loss_g.detach().to(wide))
        if step == 0 and cfg.head == "dpt" and _on_every_rank(dead):
            head.dead_at_init = True
            if log is not None:
                log("depth dpt: the readout relu(x) + min_depth is 0 + min_depth everywhere at initialization, so no "
                    "gradient flows; rerun with another seed or head_init: positive_readout")  # fmt: skip
        flat = torch.cat([t.reshape(-1) for t in total] + [torch.stack(losses).sum().reshape(1)])
        D.all_reduce_sum(flat)  # in place; identity in one process
        flat /= groups  # the mean over the global batch's groups: DINOv2's per-GPU loss, gradients averaged
        loss = flat[-1]  # the global batch's loss, the same on every rank
        if scalars is not None:
            scalars.add_scalar("train/loss", loss.item(), step)
            scalars.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(flat).all()):
            skipped += 1  # a NaN batch must not poison the head; every rank sees the same sums and skips with it
        else:
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view(p.shape).to(p.dtype)
                offset += p.numel()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
        scheduler.step()
        if checkpoint is not None and checkpoint.due(step + 1, cfg.iterations):
            checkpoint.save({"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "step": step + 1, "skipped": skipped,
                             "rng": gathered_rng_state()}, signature)  # fmt: skip
        if log is not None and (step + 1) % max(1, cfg.iterations // 5) == 0:
            log(f"depth {cfg.head}: step {step + 1}/{cfg.iterations} loss {loss.item():.4f}")
    head.eval()
    head.skipped_steps = skipped
    return head


@torch.no_grad()
def evaluate(backbone: nn.Module, head: nn.Module, test_set, cfg: DepthConfig, *, device: torch.device,
             num_workers: int = 0, amp_dtype: torch.dtype | None = None) -> dict[str, float]:  # fmt: skip
    """Metrics averaged over the test images (full resolution, flip-averaged when ``cfg.flip_eval``)."""
    blocks = head_blocks(cfg.head, len(backbone.blocks))
    pre = preprocessing_of(backbone)
    dataset = TestNYU(test_set, pre.mean, pre.std)
    if cfg.eval_images:
        dataset = Subset(dataset, range(min(cfg.eval_images, len(dataset))))
    start, stop = D.shard_range(len(dataset))
    loader = DataLoader(Subset(dataset, range(start, stop)), batch_size=1, num_workers=num_workers)
    averager = MetricAverager()
    head.eval()
    for image, depth in loader:
        image = image.to(device)
        pred = predict(backbone, head, image, blocks, cfg.eval_resize, amp_dtype)
        if cfg.flip_eval:
            pred = 0.5 * (pred + predict(backbone, head, image.flip(-1), blocks, cfg.eval_resize, amp_dtype).flip(-1))
        averager.add(image_metrics(pred[0, 0].cpu(), depth[0, 0], cfg.min_depth, cfg.max_depth,
                                   include_max=cfg.eval_valid_gt == "inclusive"))  # fmt: skip
    if D.is_distributed():
        state = torch.tensor(averager.state(), dtype=torch.float64, device=D.collective_device())
        torch.distributed.all_reduce(state)
        averager = MetricAverager()
        averager.merge_state(state.cpu().tolist())
    result = averager.result()
    result["n_images"] = float(averager.count)
    return result
