"""CAUSE-TR (Kim et al., Causal Unsupervised Semantic Segmentation) on a frozen backbone: three stages.

Facts from the paper and its public code, reimplemented here (tokens = last block's patch tokens, B x P x C):
1. Concept codebook (K x C, init U(-1/K, 1/K)) learned by maximizing modularity: per image, affinity
   A = relu(cos(x, x)) without its diagonal, W = A - d d^T / 2m; soft assignment D = relu(cos(x, codebook));
   delta_ij = max_k tanh(D_ki D_kj / 0.1); loss = -trace(W delta) / 2m. Tokens are first thinned by "grid"
   sampling: one random token per 4 x 4 cell.
2. Segment head: one transformer-decoder layer (1 head, FFN 2048, dropout 0.1) whose queries are the tokens
   quantized to their concept (+ a learned positional embedding) attending to the tokens, output
   ``tokens + LN(...)`` reduced to 90 dims by 1x1 ``W1 x + W3 relu(W2 x)``; a projection 90 -> 2048; an EMA
   teacher (0.99) of both. Concept-wise contrastive loss (T 0.07) between student and teacher projections:
   positives are token pairs whose concepts have cosine > 0.3, negatives < 0.1, in the batch and against a
   bank of teacher projections (at most 100 per concept, half of each batch's keys kept). A linear probe on the
   teacher's features trains beside it (cross-entropy, supervised). Adam 1e-3, gradient norm clip.
3. Cluster probe (n_classes x 90) trained by the same modularity objective on the teacher's features, with the
   linear probe; Adam 1e-3 halved every 2 epochs. The official code also lets the linear probe's cross-entropy
   train the teacher head in this stage (its parameters are left trainable); ``stage3_teacher_trainable``
   reproduces that (default, as the paper used the official code) and can switch it off.
Evaluation: without CRF, the teacher's features of the image, upsampled, nearest centroid; with CRF, features
averaged with the flipped image's, log_softmax(3 x cosine), DenseCRF. One Hungarian matching per setting.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.core import distributed as D

from . import batches as B
from . import loop as L
from .crf import CRFParams, backend_name, crf_batch, resolve_workers
from .data import SegmentationView
from .metrics import ConfusionAccumulator
from .stego import linear_probe_loss
from .tokens import TokenSource, compute_tokens


def _uniform_(tensor: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return tensor.uniform_(-1.0 / n, 1.0 / n)


def as_tokens(maps: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> B x (h w) x C."""
    return maps.flatten(2).transpose(1, 2)


def as_maps(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def grid_sample_tokens(maps: torch.Tensor, cell: int, order: torch.Tensor | None = None,
                       noise: L.StepNoise | None = None):  # fmt: skip
    """One token per ``cell`` x ``cell`` block of a B x C x h x w map (random position per block, drawn from
    ``noise`` when given, unless ``order`` repeats an earlier draw): (B x n_blocks x C, order). Rows/columns past
    the last full block drop."""
    batch, channels, height, width = maps.shape
    cell = max(1, min(cell, height, width))
    gh, gw = height // cell, width // cell
    blocks = maps[:, :, : gh * cell, : gw * cell].reshape(batch, channels, gh, cell, gw, cell)
    blocks = blocks.permute(0, 2, 4, 3, 5, 1).reshape(batch, gh * gw, cell * cell, channels)
    if order is None and noise is not None:
        order = noise.randint(cell * cell, gh * gw).to(maps.device)
    elif order is None:
        order = torch.randint(cell * cell, (batch, gh * gw), device=maps.device)
    picked = torch.gather(blocks, 2, order[:, :, None, None].expand(-1, -1, 1, channels)).squeeze(2)
    return picked, order


def modularity_loss(centroids: torch.Tensor, tokens: torch.Tensor, temperature: float = 0.1,
                    mean=torch.mean) -> torch.Tensor:  # fmt: skip
    """Minus the soft modularity of assigning ``tokens`` (B x P x C, treated as constants) to ``centroids``,
    averaged over the images by ``mean`` (``StepNoise.mean`` under data parallel)."""
    x = F.normalize(tokens.detach().float(), dim=2)
    affinity = (x @ x.transpose(1, 2)).clamp(min=0)
    affinity = affinity * (1 - torch.eye(affinity.shape[1], device=affinity.device))
    degree = affinity.sum(2, keepdim=True)
    edges = affinity.sum((1, 2), keepdim=True)
    modularity = affinity - degree @ degree.transpose(1, 2) / edges
    assign = (x @ F.normalize(centroids.float(), dim=1).t()).clamp(min=0)  # B x P x K
    # max_k tanh(a_ik a_jk / T) = tanh(max_k a_ik a_jk / T): tanh is increasing
    pair = (assign.transpose(1, 2)[:, :, :, None] * assign.transpose(1, 2)[:, :, None, :]).amax(1)
    delta = torch.tanh(pair / temperature)
    trace = (modularity * delta.transpose(1, 2)).sum((1, 2)) / edges.reshape(-1)
    return -mean(trace)


def quantize(tokens: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(concept index B x P, concept vectors B x P x C) by cosine similarity."""
    sims = F.normalize(tokens, dim=-1) @ F.normalize(codebook, dim=1).t()
    index = sims.argmax(-1)
    return index, codebook[index]


def attention(mha: nn.MultiheadAttention, query, key, value, drop: nn.Module) -> torch.Tensor:
    """``mha(query, key, value)`` (batch first, no masks, its own projections) with the dropout of the attention
    weights applied by ``drop``: a :class:`L.BatchDropout`, whose masks any number of ranks draw alike."""
    batch, n_query, dim = query.shape
    heads = mha.num_heads
    head_dim = dim // heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)

    def split(x, w, b):
        return F.linear(x, w, b).reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
    weights = torch.softmax((q / math.sqrt(head_dim)) @ k.transpose(-2, -1), dim=-1)
    out = (drop(weights) @ v).transpose(1, 2).reshape(batch, n_query, dim)
    return mha.out_proj(out)


class ReduceHead(nn.Module):
    """``W1 x + W3 relu(W2 x)`` per token (C -> reduced), each branch through its own dropout draw."""

    def __init__(self, dim: int, reduced: int):
        super().__init__()
        self.f1 = nn.Linear(dim, reduced)
        self.f2 = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, reduced))

    def forward(self, x: torch.Tensor, drop: nn.Module) -> torch.Tensor:
        return self.f1(drop(x)) + self.f2(drop(x))


class TRHead(nn.Module):
    """CAUSE-TR's segment head: a post-norm transformer-decoder layer over concept-quantized queries."""

    def __init__(self, dim: int, n_queries: int, reduced: int = 90, hidden: int = 2048, heads: int = 1,
                 dropout: float = 0.1):  # fmt: skip
        super().__init__()
        self.query_pos = nn.Parameter(torch.randn(n_queries, dim))
        # the attention layers' parameters; their weights' dropout is attn_drop (see ``attention``)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.attn_drop = L.BatchDropout(dropout)
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop, self.drop1, self.drop2, self.drop3 = (L.BatchDropout(dropout) for _ in range(4))
        self.reduce = ReduceHead(dim, reduced)

    def forward(self, tokens: torch.Tensor, codebook: torch.Tensor, drop: nn.Module | None = None):
        if tokens.shape[1] != self.query_pos.shape[0]:
            raise ValueError(
                f"CAUSE-TR head was built for {self.query_pos.shape[0]} tokens but got {tokens.shape[1]}: train "
                "and evaluate at one resolution (the positional queries are per token)"
            )
        pos = self.query_pos[None]
        tgt = quantize(tokens, codebook)[1]
        q = tgt + pos
        tgt = self.norm1(tgt + self.drop1(attention(self.self_attn, q, q, tgt, self.attn_drop)))
        tgt = self.norm2(tgt + self.drop2(attention(self.cross_attn, tgt + pos, tokens, tokens, self.attn_drop)))
        tgt = tgt + self.drop3(self.linear2(self.drop(F.relu(self.linear1(tgt)))))
        return self.reduce(tokens + self.norm3(tgt), drop if drop is not None else nn.Identity())


class CauseSegment(nn.Module):
    def __init__(self, dim: int, n_queries: int, n_classes: int, cfg: dict[str, Any]):
        super().__init__()
        opts = dict(reduced=cfg["reduced_dim"], hidden=cfg["hidden_dim"], heads=cfg["heads"], dropout=cfg["dropout"])
        self.dropout = L.BatchDropout(cfg["dropout"])
        self.head = TRHead(dim, n_queries, **opts)
        self.projection = nn.Linear(cfg["reduced_dim"], cfg["projection_dim"])
        self.head_ema = copy.deepcopy(self.head)
        self.projection_ema = copy.deepcopy(self.projection)
        for p in [*self.head_ema.parameters(), *self.projection_ema.parameters()]:
            p.requires_grad_(False)
        self.linear = nn.Linear(cfg["reduced_dim"], n_classes)

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        for student, teacher in ((self.head, self.head_ema), (self.projection, self.projection_ema)):
            for s, t in zip(student.parameters(), teacher.parameters()):
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


class ConceptBank(nn.Module):
    """At most ``size`` normalized teacher projections per concept, oldest dropped first (a ring per concept).

    A module of buffers only, so the stage's checkpoint carries it and a resumed run sees the same bank."""

    def __init__(self, n_concepts: int, size: int, dim: int, device, keep: float = 0.5):
        super().__init__()
        self.size, self.keep = int(size), float(keep)
        self.register_buffer("values", torch.zeros(n_concepts, self.size, dim, device=device))
        self.register_buffer("filled", torch.zeros(n_concepts, dtype=torch.long, device=device))
        self.register_buffer("head", torch.zeros(n_concepts, dtype=torch.long, device=device))

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept of each stored key, keys), M and M x D."""
        slots = torch.arange(self.size, device=self.values.device)
        used = slots[None, :] < self.filled[:, None]
        concepts = torch.nonzero(used)[:, 0]
        return concepts, self.values[used]

    @torch.no_grad()
    def update(self, concepts: torch.Tensor, keys: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Add a random ``keep`` share of each concept's ``keys`` (concepts N, keys N x D)."""
        if concepts.numel() == 0:
            return
        keys = F.normalize(keys.float(), dim=1)
        order = torch.randperm(len(concepts), device=concepts.device, generator=generator)
        concepts, keys = concepts[order], keys[order]
        concepts, perm = torch.sort(concepts, stable=True)
        keys = keys[perm]
        uniq, counts = torch.unique_consecutive(concepts, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(concepts), device=concepts.device) - torch.repeat_interleave(starts, counts)
        kept_counts = (counts.float() * self.keep).long()
        kept = rank < torch.repeat_interleave(kept_counts, counts)
        # of the kept keys, only the last `size` of each concept can survive the ring
        kept &= rank >= torch.repeat_interleave((kept_counts - self.size).clamp(min=0), counts)
        if not bool(kept.any()):
            return
        c, r = concepts[kept], rank[kept]
        self.values[c, (self.head[c] + r) % self.size] = keys[kept]  # write order = rank: later keys win
        self.head[uniq] = (self.head[uniq] + kept_counts) % self.size
        self.filled[uniq] = (self.filled[uniq] + kept_counts).clamp(max=self.size)


def _nce(sims: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor | None:
    """Mean over positive pairs of -log(exp(s_p / T) / sum over positives and negatives of exp(s / T))."""
    if not bool(pos.any()):
        return None
    logits = sims / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    denom = torch.log((logits.exp() * (pos | neg)).sum(1, keepdim=True) + 1e-12)
    return (denom - logits)[pos].mean()


def concept_contrastive_loss(tokens, proj, proj_ema, codebook, bank: ConceptBank, cfg: dict[str, Any],
                             n_global: int | None = None):  # fmt: skip
    """CAUSE's concept-wise contrastive loss of a batch of grid-sampled tokens (each B x P x .).

    Under data parallel the B items are this rank's share of a global batch of ``n_global``: the anchors are
    this rank's tokens, their keys the teacher projections of the whole global batch (gathered, no gradient),
    and the loss is this rank's share of the mean over all anchors' terms (``L.share_of_mean``)."""
    batch, n_tok = tokens.shape[:2]
    n_global = batch if n_global is None else int(n_global)
    index, vq = quantize(tokens, codebook)
    vq = F.normalize(vq, dim=2)
    student = F.normalize(proj, dim=2)
    teacher = L.gather_batch(F.normalize(proj_ema, dim=2), n_global).reshape(n_global * n_tok, -1)
    flat_vq = F.normalize(codebook[L.gather_batch(index, n_global)], dim=2).reshape(n_global * n_tok, -1)
    positions = L.share_positions(n_global).tolist() if n_global != batch else list(range(batch))
    bank_concepts, bank_keys = bank.entries()
    normed_codebook = F.normalize(codebook, dim=1)
    t, hi, lo = cfg["temperature"], cfg["pos_threshold"], cfg["neg_threshold"]
    terms = []
    for b in range(batch):
        concept_sim = vq[b] @ flat_vq.t()
        pos, neg = concept_sim > hi, concept_sim < lo
        self_pairs = torch.arange(n_tok, device=tokens.device)
        pos[self_pairs, positions[b] * n_tok + self_pairs] = False  # a token is not its own positive
        term = _nce(student[b] @ teacher.t(), pos, neg, t)
        if term is not None:
            terms.append(term)
        if len(bank_keys):
            bank_sim = (vq[b] @ normed_codebook.t())[:, bank_concepts]
            term = _nce(student[b] @ bank_keys.t(), bank_sim > hi, bank_sim < lo, t)
            if term is not None:
                terms.append(term)
    total = sum(terms) if terms else proj.sum() * 0.0
    return L.share_of_mean(total, len(terms)), index


# ------------------------------------------------------------------------------------------- training
def epoch_items(n_items: int, cfg: dict[str, Any]) -> int:
    """Items an epoch visits: under ``ddp: reference`` the share that the official rank 0 trains on (see
    ``task._cause_ddp``): torch's DistributedSampler (drop_last False) pads the shuffled indices to a multiple of
    the processes and gives each ceil(n / processes), rank 0's all distinct items; else all."""
    return max(1, math.ceil(n_items / int(cfg.get("ddp_processes", 1))))


def _schedule(n_items: int, cfg_stage: dict[str, Any], cfg: dict[str, Any] | None = None):
    batch = int(cfg_stage["batch_size"])
    # the official DataLoader has no drop_last: an epoch's last, smaller batch is trained on
    per_epoch = L.steps_per_epoch(epoch_items(n_items, cfg or {}), batch, keep_partial=True)
    total = per_epoch * int(cfg_stage["epochs"])
    return batch, per_epoch, total


def _resume(ckpt: L.Checkpoint, modules: dict[str, nn.Module], optims: dict[str, Any], ctx, stage: str):
    state = ckpt.load(ctx.log)
    if state is None:
        for module in modules.values():
            L.broadcast_parameters(module)
        return 0, {}, L.LossSums()
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    for name, opt in optims.items():
        opt.load_state_dict(state["optims"][name])
    ctx.log(f"cause {stage}: resuming at step {state['step']} from {ckpt.path}")
    return int(state["step"]), dict(state.get("stats", {})), L.LossSums.restore(state, int(state["step"]))


def _save(ckpt, step, modules, optims, stats, sums=None):
    ckpt.save({"step": step, "modules": {k: m.state_dict() for k, m in modules.items()},
               "optims": {k: o.state_dict() for k, o in optims.items()}, "stats": stats, **(sums or {})})  # fmt: skip


def _run_stage(name, source: TokenSource, cfg, stage_cfg, ctx, modules, optims, step_fn):
    """Generic epoch loop with resume: ``step_fn(token maps, labels, epoch, noise) -> {loss name: value}``, where
    the maps and labels are this rank's share of the global batch and ``noise`` (:class:`L.StepNoise`) draws the
    step's random numbers for the global batch."""
    batch, per_epoch, total = _schedule(len(source.view), stage_cfg, cfg)
    items = epoch_items(len(source.view), cfg)
    D.per_rank_batch(batch, what=f"{name}.batch_size")  # the global batch splits evenly across ranks
    fingerprint = L.config_fingerprint({"cfg": cfg, "seed": ctx.seed, "world": ctx.world_size, "stage": name})
    ckpt = L.Checkpoint(ctx.work_dir, f"cause_{name}", fingerprint)
    start, stats, summed = _resume(ckpt, modules, optims, ctx, name)
    if start >= total:
        return stats
    batches = [L.global_batch(len(source.view), batch, s, ctx.seed, items, keep_partial=True)
               for s in range(start, total)]  # fmt: skip
    keys = [L.local_share(b).tolist() for b in batches]
    stream = B.iterate(source.view, keys, load_images=not source.cached, num_workers=ctx.num_workers)
    sums: dict[str, float] = dict(summed.sums)
    bar = L.progress_bar(total, start, f"cause {name}", ctx.progress)
    for step, item, global_items in zip(range(start, total), stream, batches):
        n_global = len(global_items)  # the epoch's last batch may be smaller
        torch.manual_seed(L.step_seed(ctx.seed, f"cause-{name}", step))
        maps = source.tokens_of(item["index"], item.get("image"))
        labels = item["label"].to(maps.device) if "label" in item else source.labels_of(item["index"])
        noise = L.StepNoise(ctx.seed, f"cause-{name}", step, n_global, maps.device)
        values = step_fn(maps, labels, step // per_epoch, noise)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        bar.update(1)
        done = step + 1
        if done % int(cfg["checkpoint_every"]) == 0 or done == total:
            stats = L.averaged_stats(sums, done - summed.since, f"{name}_")
            _save(ckpt, done, modules, optims, stats, summed.state(sums))
    bar.close()
    return stats


def _step(loss, optims, params, clipped=(), clip=None):
    """Backward, average gradients over ranks, clip the norm of ``clipped`` (as the reference: the segment head's
    parameters only), step."""
    for opt in optims:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    L.average_gradients(params)
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in clipped if p.grad is not None], clip)
    for opt in optims:
        opt.step()


def train_codebook(codebook: nn.Parameter, source: TokenSource, cfg, ctx) -> dict[str, float]:
    stage = cfg["stage1"]
    holder = nn.ParameterDict({"codebook": codebook})
    opt = torch.optim.Adam(holder.parameters(), lr=stage["lr"])

    def step_fn(maps, labels, epoch, noise):
        sampled, _ = grid_sample_tokens(maps, cfg["grid_cell"], noise=noise)
        loss = modularity_loss(holder["codebook"], sampled, cfg["modularity_temperature"], noise.mean)
        _step(loss, [opt], list(holder.parameters()))
        return {"modularity": loss.detach()}

    return _run_stage("stage1", source, cfg, stage, ctx, {"codebook": holder}, {"opt": opt}, step_fn)


def train_segment(segment: CauseSegment, codebook: torch.Tensor, source: TokenSource, cfg, ctx,
                  n_classes: int) -> dict[str, float]:  # fmt: skip
    stage = cfg["stage2"]
    trainable = [p for p in segment.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=stage["lr"], weight_decay=stage["weight_decay"])
    bank = ConceptBank(codebook.shape[0], cfg["bank_size"], cfg["projection_dim"], codebook.device, cfg["bank_keep"])
    height = width = int(math.isqrt(segment.head.query_pos.shape[0]))

    def step_fn(maps, labels, epoch, noise):
        segment.train()
        tokens = as_tokens(maps)
        with L.noise_of(segment, noise):
            with torch.no_grad():
                seg_ema = segment.head_ema(tokens, codebook, segment.dropout)
                proj_ema = segment.projection_ema(seg_ema)
            seg = segment.head(tokens, codebook, segment.dropout)
        proj = segment.projection(seg)
        feat_s, order = grid_sample_tokens(maps, cfg["grid_cell"], noise=noise)
        proj_s, _ = grid_sample_tokens(as_maps(proj, height, width), cfg["grid_cell"], order)
        proj_ema_s, _ = grid_sample_tokens(as_maps(proj_ema, height, width), cfg["grid_cell"], order)
        front, concepts = concept_contrastive_loss(feat_s, proj_s, proj_ema_s, codebook, bank, cfg, noise.n_global)
        logits = as_maps(segment.linear(seg_ema), height, width)
        linear = linear_probe_loss(logits, labels, n_classes)
        _step(front + linear, [opt], trainable, trainable, stage["grad_clip"])
        segment.ema_update(cfg["ema_momentum"])
        # one bank, the same on every rank: the keys of the whole global batch, kept by the shared draw
        keys = L.gather_batch(proj_ema_s, noise.n_global)
        bank.update(L.gather_batch(concepts, noise.n_global).reshape(-1), keys.reshape(-1, keys.shape[-1]),
                    noise.generator)
        return {"contrastive": front.detach(), "linear": linear.detach()}

    return _run_stage("stage2", source, cfg, stage, ctx, {"segment": segment, "bank": bank}, {"opt": opt}, step_fn)


def train_cluster_probe(segment: CauseSegment, probe: nn.Parameter, codebook: torch.Tensor, source, cfg, ctx,
                        n_classes: int) -> dict[str, float]:  # fmt: skip
    stage = cfg["stage3"]
    teacher_trains = bool(stage["teacher_trainable"])
    for p in segment.head_ema.parameters():
        p.requires_grad_(teacher_trains)
    seg_params = [*segment.linear.parameters(), *(segment.head_ema.parameters() if teacher_trains else [])]
    holder = nn.ParameterDict({"probe": probe})
    opt_seg = torch.optim.Adam(seg_params, lr=stage["lr"], weight_decay=stage["weight_decay"])
    opt_probe = torch.optim.Adam(holder.parameters(), lr=stage["lr"])
    height = width = int(math.isqrt(segment.head.query_pos.shape[0]))

    def step_fn(maps, labels, epoch, noise):
        # StepLR as the reference: the rate halves every lr_step_epochs epochs (a function of the epoch, so resumable)
        lr = stage["lr"] * stage["lr_gamma"] ** (epoch // stage["lr_step_epochs"])
        for opt in (opt_seg, opt_probe):
            for group in opt.param_groups:
                group["lr"] = lr
        segment.train()
        with torch.set_grad_enabled(teacher_trains), L.noise_of(segment, noise):
            seg_ema = segment.head_ema(as_tokens(maps), codebook, segment.dropout)
        seg_maps = as_maps(seg_ema, height, width)
        sampled, _ = grid_sample_tokens(seg_maps, cfg["grid_cell"], noise=noise)
        mod = modularity_loss(holder["probe"], sampled, cfg["modularity_temperature"], noise.mean)
        linear = linear_probe_loss(as_maps(segment.linear(seg_ema), height, width), labels, n_classes)
        _step(mod + linear, [opt_seg, opt_probe], [*seg_params, *holder.parameters()], seg_params, stage["grad_clip"])
        return {"modularity": mod.detach(), "linear": linear.detach()}

    modules = {"segment": segment, "probe": holder}
    optims = {"seg": opt_seg, "probe": opt_probe}
    stats = _run_stage("stage3", source, cfg, stage, ctx, modules, optims, step_fn)
    for p in segment.head_ema.parameters():
        p.requires_grad_(False)
    return stats


# ----------------------------------------------------------------------------------------- evaluation
def _cosine(features: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bchw,nc->bnhw", F.normalize(features, dim=1), F.normalize(probe, dim=1))


@torch.no_grad()
def evaluate_cause(backbone, segment: CauseSegment, probe: torch.Tensor, codebook: torch.Tensor,
                   view: SegmentationView, cfg: dict[str, Any], ctx, n_classes: int) -> dict[str, dict]:  # fmt: skip
    device = torch.device(ctx.device)
    segment.eval()
    acc = {name: ConfusionAccumulator(n_classes) for name in ("cluster", "cluster_crf", "linear")}
    params = CRFParams(**cfg.get("crf_params", {}))
    workers = resolve_workers(cfg.get("crf_workers", 0), D.world_size())
    batches = L.eval_batches(len(view), int(cfg["eval_batch_size"]))
    bar = L.progress_bar(len(batches), 0, "cause eval", ctx.progress)
    for item in B.iterate(view, batches, load_images=True, num_workers=ctx.num_workers):
        images, labels = item["image"].to(device), item["label"]
        maps = compute_tokens(backbone, images, ctx.amp_dtype)
        h, w = maps.shape[-2:]
        seg = as_maps(segment.head_ema(as_tokens(maps), codebook), h, w)
        up = F.interpolate(seg, labels.shape[-2:], mode="bilinear", align_corners=False)
        acc["cluster"].update(_cosine(up, probe).argmax(1).cpu(), labels)
        linear = segment.linear(up.permute(0, 2, 3, 1)).argmax(-1)
        acc["linear"].update(linear.cpu(), labels)
        if cfg["crf"]:
            flipped = compute_tokens(backbone, images.flip(dims=[3]), ctx.amp_dtype)
            seg_flip = as_maps(segment.head_ema(as_tokens(flipped), codebook), h, w)
            averaged = (seg + seg_flip.flip(dims=[3])) / 2
            up = F.interpolate(averaged, labels.shape[-2:], mode="bilinear", align_corners=False)
            logp = F.log_softmax(_cosine(up, probe) * cfg["cluster_alpha"], dim=1).float().cpu()
            refined = crf_batch(item["rgb"], logp, params, cfg["crf_backend"], workers)
            acc["cluster_crf"].update(refined.argmax(1), labels)
        bar.update(1)
    bar.close()
    out = {}
    for name, accumulator in acc.items():
        if name == "cluster_crf" and not cfg["crf"]:
            continue
        accumulator.all_reduce()
        out[name] = accumulator.compute(hungarian=name != "linear", map_definition=cfg["map_definition"])
    return out


def cause_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Table 2's columns: mIoU, mAP, Acc without and with CRF (+ the linear probe for reference)."""
    metrics = {"miou": results["cluster"]["mIoU"], "map": results["cluster"]["mAP"], "acc": results["cluster"]["Acc"]}
    if "cluster_crf" in results:
        crf = results["cluster_crf"]
        metrics.update(crf_miou=crf["mIoU"], crf_map=crf["mAP"], crf_acc=crf["Acc"])
    metrics.update(linear_miou=results["linear"]["mIoU"], linear_acc=results["linear"]["Acc"])
    return metrics


def run_cause(backbone, ctx, cfg: dict[str, Any], train_view: SegmentationView, val_view: SegmentationView,
              n_classes: int) -> dict[str, Any]:  # fmt: skip
    """All three CAUSE-TR stages on ``train_view``, then the scores on ``val_view``."""
    device = torch.device(ctx.device)
    backbone.eval()  # frozen: its tokens are computed under inference_mode
    source = TokenSource(backbone, train_view, ctx, cache=cfg["feature_cache"], max_cache_gb=cfg["max_cache_gb"],
                         batch_size=int(cfg["eval_batch_size"]) * 4, desc="cause train tokens")  # fmt: skip
    dim, (gh, gw) = source.channels, source.grid
    torch.manual_seed(ctx.seed)
    codebook = nn.Parameter(_uniform_(torch.empty(cfg["codebook_size"], dim), cfg["codebook_size"]).to(device))
    stats = train_codebook(codebook, source, cfg, ctx)
    frozen_codebook = codebook.detach().clone()
    torch.manual_seed(ctx.seed + 1)
    segment = CauseSegment(dim, gh * gw, n_classes, cfg).to(device)
    stats.update(train_segment(segment, frozen_codebook, source, cfg, ctx, n_classes))
    probe = nn.Parameter(_uniform_(torch.empty(n_classes, cfg["reduced_dim"]), n_classes).to(device))
    stats.update(train_cluster_probe(segment, probe, frozen_codebook, source, cfg, ctx, n_classes))
    results = evaluate_cause(backbone, segment, probe.detach(), frozen_codebook, val_view, cfg, ctx, n_classes)
    hparams = {
        "crf_backend": backend_name(cfg["crf_backend"]) if cfg["crf"] else None,
        "token_source": source.mode, "token_cache_estimate_gb": round(source.estimated_gb, 3),
        "n_train_items": len(train_view), "n_val_items": len(val_view), "world_size": D.world_size(),
        "stage3_teacher_trainable": bool(cfg["stage3"]["teacher_trainable"]), "map_definition": cfg["map_definition"],
        "ddp": cfg.get("ddp", "single"), "ddp_processes": int(cfg.get("ddp_processes", 1)),
        **{f"{st}_{key}": value for st in ("stage1", "stage2", "stage3") for key, value in (
            ("global_batch", int(cfg[st]["batch_size"])), ("lr", cfg[st]["lr"]),
            ("batch_per_rank", D.per_rank_batch(int(cfg[st]["batch_size"]), what=f"{st}.batch_size")))},
        **{k: round(v, 5) for k, v in stats.items() if isinstance(v, float) and math.isfinite(v)},
    }  # fmt: skip
    return {"metrics": cause_metrics(results), "hparams": hparams, "details": results,
            "deviations": cause_deviations({**cfg, "n_train_items": len(train_view)}, D.world_size())}  # fmt: skip


def cause_deviations(cfg: dict[str, Any], world_size: int) -> list[str]:
    """How this run departs from the official CAUSE scripts (the record's ``deviations``). ``world_size`` does
    not matter: any number of ranks trains the one-process model (``tests/test_unsup_ddp.py``)."""
    del world_size
    out = []
    n_items = cfg.get("n_train_items")
    if n_items is not None:  # set by run_cause: the partial batch is kept unless it has fewer items than ranks
        for stage in ("stage1", "stage2", "stage3"):
            note = L.partial_batch_dropped(epoch_items(int(n_items), cfg), int(cfg[stage]["batch_size"]))
            if note is not None:
                out.append(f"{stage}: {note}")
    if cfg.get("ddp", "single") == "single":
        out.append("ddp=single: batch, lr and epochs read as one process on the whole set (official: rank 0 of 4 "
                   "unsynchronised processes, lr x4, a quarter of the set per epoch)")  # fmt: skip
    if cfg.get("map_definition") != "cause":
        out.append(f"map_definition={cfg.get('map_definition')}: mAP is not CAUSE's mean per-class precision")
    if not cfg["stage3"]["teacher_trainable"]:
        out.append("stage3 teacher frozen (official: trainable)")
    return out
