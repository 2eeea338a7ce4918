"""STEGO (Hamilton et al., ICLR 2022) on a frozen backbone: the segmentation head, its loss, probes, evaluation.

Facts from the paper and its public code (configs and losses), reimplemented here:
- Head on the last block's patch tokens (C channels): ``code = W1 x + W3 relu(W2 x)`` (1x1 convolutions C->70 and
  C->C->70), each branch reading the features through its own channel dropout (p 0.1); the correspondence loss
  sees the features through dropout too.
- Correspondence loss on ``feature_samples`` x ``feature_samples`` points sampled uniformly (bilinear, border
  padding): for feature maps f1, f2 and codes c1, c2, ``F = corr(norm f1, norm f2)`` centred per point over the
  other map's points (plus its global mean, "pointwise"), ``S = corr(norm c1, norm c2)`` and the loss
  ``-clamp(S, 0) * (F - shift)``. Three pairs: the image with itself (pos_intra), with a KNN positive
  (pos_inter: one of its 1..7 nearest neighbours by pooled features) and with ``neg_samples`` random other images
  of the batch (neg_inter). Weighted by the six per-dataset/backbone numbers of SINDER's appendix Table 7.
- Probes on the detached code: a cluster probe (learnable centroids, cosine; loss = -max cosine) and a linear
  1x1 conv with cross-entropy on the labels (supervised, for reference). Adam: head 5e-4, probes 5e-3.
- Evaluation: code averaged with that of the flipped image, bilinearly upsampled to the label size; cluster
  probe log-probabilities log_softmax(2 x cosine); optional DenseCRF; one Hungarian matching over the set.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.core import distributed as D
from benchmarks.core.preprocessing import patch_multiple

from . import batches as B
from . import loop as L
from .crf import CRFParams, backend_name, crf_batch, resolve_workers
from .data import SegmentationView
from .metrics import ConfusionAccumulator
from .tokens import TokenSource, compute_tokens


class StegoHead(nn.Module):
    def __init__(self, dim: int, code_dim: int = 70, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(dim, code_dim, 1)
        self.nonlinear = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, code_dim, 1))

    def forward(self, feats: torch.Tensor, noise: L.StepNoise | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(features as the loss sees them, code); every use of the features draws its own dropout mask (from
        ``noise`` when training with one, so that any number of ranks draws the masks of one process)."""
        if self.training and noise is not None:
            p = self.dropout.p

            def drop(x):
                return noise.dropout(x, p, channels=True)
        else:
            drop = self.dropout
        code = self.linear(drop(feats)) + self.nonlinear(drop(feats))
        return drop(feats), code


class ClusterProbe(nn.Module):
    """Learnable centroids; cosine similarity of normalized code vectors to normalized centroids."""

    def __init__(self, dim: int, n_clusters: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.randn(n_clusters, dim))

    def similarities(self, code: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,nc->bnhw", F.normalize(code, dim=1), F.normalize(self.centroids, dim=1))

    def loss(self, code: torch.Tensor, mean=torch.mean) -> torch.Tensor:
        """Minus the mean cosine of each code vector to its nearest centroid (hard assignment); ``mean``: over
        the batch (``StepNoise.mean`` under data parallel)."""
        return -mean(self.similarities(code).max(dim=1).values)

    def log_probs(self, code: torch.Tensor, alpha: float) -> torch.Tensor:
        return F.log_softmax(self.similarities(code) * alpha, dim=1)


class StegoModel(nn.Module):
    def __init__(self, dim: int, n_classes: int, code_dim: int = 70, dropout: float = 0.1, extra_clusters: int = 0):
        super().__init__()
        self.head = StegoHead(dim, code_dim, dropout)
        self.cluster_probe = ClusterProbe(code_dim, n_classes + extra_clusters)
        self.linear_probe = nn.Conv2d(code_dim, n_classes, 1)


# ---------------------------------------------------------------------------------------------- the loss
def _sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    # coords: B x S x S x 2 in [-1, 1]; STEGO transposes them, which only reorders the samples
    return F.grid_sample(maps, coords.permute(0, 2, 1, 3), padding_mode="border", align_corners=True)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nchw,ncij->nhwij", F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10))


def pair_loss(f1, f2, c1, c2, shift: float, pointwise: bool = True, zero_clamp: bool = True,
              stabilize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Elementwise ``-clamp(S) * (F - shift)`` and S for one pair of (sampled) feature and code maps."""
    with torch.no_grad():
        fd = _correlation(f1, f2)
        if pointwise:  # the batch-wide means are over the global batch (all ranks)
            global_mean = L.global_mean(fd)
            fd = fd - fd.mean(dim=(3, 4), keepdim=True)
            fd = fd - L.global_mean(fd) + global_mean
    cd = _correlation(c1, c2)
    low = 0.0 if zero_clamp else -9999.0
    clamped = cd.clamp(low, 0.8) if stabilize else cd.clamp(min=low)
    return -clamped * (fd - shift), cd


def derangement(n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation that moves every index when n > 1, for STEGO's negative pairs ("super_perm").

    STEGO bumps fixed points of a randperm by one, which can map two indices to the same one (not a
    permutation); a random cycle through all indices is a true derangement with the same purpose.
    """
    order = torch.randperm(n, device=device, generator=generator)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm


def correspondence_losses(feats, feats_pos, code, code_pos, cfg: dict[str, Any],
                          noise: L.StepNoise | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Mean pos_intra, pos_inter and neg_inter losses of a batch (STEGO's ContrastiveCorrelationLoss).

    With ``noise`` (training) the batch is this rank's share of a global batch: the sampled points are drawn
    for the global batch, negatives are other items of the global batch (gathered from all ranks, gradients
    returned to their ranks) and the means are this rank's share of the global means (``StepNoise.mean``)."""
    batch = feats.shape[0]
    s = int(cfg["feature_samples"])
    if noise is not None:
        coords1, coords2 = noise.rand(s, s, 2) * 2 - 1, noise.rand(s, s, 2) * 2 - 1
        mean = noise.mean
    else:
        shape = (batch, s, s, 2)
        coords1 = torch.rand(shape, device=feats.device) * 2 - 1
        coords2 = torch.rand(shape, device=feats.device) * 2 - 1
        mean = torch.mean
    opts = dict(pointwise=cfg["pointwise"], zero_clamp=cfg["zero_clamp"], stabilize=cfg["stabilize"])
    f, c = _sample(feats, coords1), _sample(code, coords1)
    f_pos, c_pos = _sample(feats_pos, coords2), _sample(code_pos, coords2)
    w = cfg["loss"]
    pos_intra, _ = pair_loss(f, f, c, c, w["pos_intra_shift"], **opts)
    pos_inter, _ = pair_loss(f, f_pos, c, c_pos, w["pos_inter_shift"], **opts)
    n_global = noise.n_global if noise is not None else batch
    feats_all = L.gather_batch(feats.detach(), n_global)
    code_all = L.gather_batch(code, n_global)
    negatives = []
    for _ in range(int(cfg["neg_samples"])):
        if noise is not None:
            perm = derangement(n_global, noise.device, noise.generator)[noise.rows]
        else:
            perm = derangement(batch, feats.device)
        f_neg, c_neg = _sample(feats_all[perm], coords2), _sample(code_all[perm], coords2)
        negatives.append(pair_loss(f, f_neg, c, c_neg, w["neg_inter_shift"], **opts)[0])
    neg_inter = mean(torch.stack(negatives, 1)) if negatives else pos_intra.new_zeros(())
    return {"pos_intra": mean(pos_intra), "pos_inter": mean(pos_inter), "neg_inter": neg_inter}


def linear_probe_loss(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Cross-entropy of the (upsampled) probe logits on the labelled pixels; 0 when none is labelled."""
    logits = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=False)
    flat = logits.permute(0, 2, 3, 1).reshape(-1, n_classes)
    target = labels.reshape(-1)
    keep = (target >= 0) & (target < n_classes)
    # a mean over the labelled pixels of the global batch (each rank's count differs): share_of_mean
    total = F.cross_entropy(flat[keep], target[keep], reduction="sum") if bool(keep.any()) else logits.sum() * 0.0
    return L.share_of_mean(total, int(keep.sum()))


# ------------------------------------------------------------------------------------------- training
def _positives(nns: torch.Tensor, indices: torch.Tensor, num_neighbors: int, seed: int, step: int):
    """One KNN positive per item of a global batch: neighbour 1..num_neighbors (0 is the item itself), drawn
    from (seed, step) alone, so every rank draws the same."""
    generator = torch.Generator().manual_seed(L.batch_seed(seed, "stego-positive", step))
    high = min(num_neighbors, nns.shape[1] - 1)
    if high < 1:
        return indices.clone()
    picks = torch.randint(1, high + 1, (len(indices),), generator=generator)
    return nns[indices, picks]


SELECTIONS = ("reference", "best", "last")


def reference_schedule(n_items: int, batch: int, steps: int, val_every: int = 100, save_every: int = 400):
    """(validation steps, checkpoint steps) of STEGO's ``train_segmentation.py`` run by PyTorch Lightning 1.5, as
    counts of finished training steps.

    - Its train DataLoader keeps the last partial batch: an epoch is ceil(n / batch) batches.
    - ``Trainer(val_check_interval=cfg.val_freq)`` (100), removed when it exceeds ``len(train_loader) // 4``
      (then Lightning validates once an epoch, after its last batch); Lightning 1.5 validates after a batch whose
      index *within the epoch* + 1 is a multiple of the interval (``_should_check_val_fx``), so the phase restarts
      every epoch. Training stops at ``max_steps`` without a final validation.
    - ``ModelCheckpoint(every_n_train_steps=400, save_top_k=2, monitor="test/cluster/mIoU", mode="max")`` saves
      in ``on_train_batch_end`` when ``(global_step + 1) % 400 == 0``, i.e. after every 400th step.
    """
    per_epoch = max(1, math.ceil(n_items / batch))
    interval = val_every if val_every <= per_epoch // 4 else per_epoch
    val_steps = [d for d in range(1, steps + 1) if ((d - 1) % per_epoch + 1) % interval == 0]
    save_steps = [d for d in range(save_every, steps + 1, save_every)]
    return val_steps, save_steps


class ReferenceSelection:
    """STEGO's checkpoint selection (``train_segmentation.py`` under Lightning 1.5), step by step.

    Lightning 1.5 calls the checkpoint callback's ``on_train_batch_end`` before the validation of the same
    step (``TrainingEpochLoop.on_advance_end``), so a checkpoint saved after step s carries the monitored score of
    the last validation *before* s (none yet: no checkpoint). STEGO logs its validation metrics only when
    ``global_step > 2`` (the step count - 1 during that validation). The top ``save_top_k`` by that lagged score
    are kept (a newcomer must beat the worst kept strictly; the worst kept, the first saved on ties, goes), and
    the evaluated checkpoint is the best kept one (Lightning's ``best_model_path``: the first saved on ties)."""

    def __init__(self, top_k: int = 2, state: dict[str, Any] | None = None):
        state = state or {}
        self.top_k = int(top_k)
        self.last_score: list | None = state.get("last_score")  # [validation step, score]
        self.validations: list[list[float]] = [list(v) for v in state.get("validations", [])]
        self.candidates: list[dict[str, Any]] = [dict(c) for c in state.get("candidates", [])]
        self.kept: list[dict[str, Any]] = [dict(k) for k in state.get("kept", [])]  # with "model", save order

    def validated(self, step: int, score: float) -> None:
        self.validations.append([int(step), float(score)])
        if step - 1 > 2:  # ``if self.global_step > 2: self.log_dict(tb_metrics)``
            self.last_score = [int(step), float(score)]

    def saved(self, step: int, model: nn.Module) -> None:
        if self.last_score is None:  # the monitor is not among the logged metrics yet: nothing saved
            return
        score = self.last_score[1]
        if math.isnan(score):  # Lightning stores a NaN monitor as -inf (mode max)
            score = float("-inf")
        entry = {"step": int(step), "score": float(score), "score_of_step": int(self.last_score[0])}
        self.candidates.append(dict(entry))
        if len(self.kept) >= self.top_k:
            worst = min(self.kept, key=lambda k: k["score"])  # the first of the minima
            if not score > worst["score"]:
                return
            self.kept.remove(worst)
        entry["model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.kept.append(entry)

    def best(self) -> dict[str, Any] | None:
        return max(self.kept, key=lambda k: k["score"]) if self.kept else None  # the first of the maxima

    def state(self) -> dict[str, Any]:
        return {"last_score": self.last_score, "validations": self.validations, "candidates": self.candidates,
                "kept": self.kept}  # fmt: skip

    def record(self) -> dict[str, Any]:
        best = self.best()
        out = {"mode": "reference", "validations": self.validations, "candidates": self.candidates,
               "kept": [{k: v for k, v in e.items() if k != "model"} for e in self.kept]}  # fmt: skip
        if best is not None:
            out.update(step=best["step"], val_cluster_miou=round(best["score"], 4), score_of_step=best["score_of_step"])
        return out


class BestCheckpoint:
    """STEGO's model selection: the model state of the highest validation cluster mIoU seen (the first on ties,
    as a "max" monitor only replaces on improvement), with the history of (step, score)."""

    def __init__(self, state: dict[str, Any] | None = None):
        state = state or {}
        self.step, self.score = state.get("step"), state.get("score")
        self.model = state.get("model")
        self.history: list[list[float]] = [list(h) for h in state.get("history", [])]

    def offer(self, step: int, score: float, model: nn.Module) -> bool:
        self.history.append([int(step), float(score)])
        if self.score is not None and not score > self.score:
            return False
        self.step, self.score = int(step), float(score)
        self.model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "score": self.score, "model": self.model, "history": self.history}


@torch.no_grad()
def validate_cluster_miou(model: StegoModel, val: TokenSource, cfg: dict[str, Any], n_classes: int) -> float:
    """STEGO's validation score: cluster-probe mIoU (Hungarian) of the val split, no flip, no CRF."""
    was_training = model.training
    model.eval()
    acc = ConfusionAccumulator(n_classes, n_classes + int(cfg.get("extra_clusters", 0)))
    for batch in L.eval_batches(len(val.view), int(cfg["eval_batch_size"])):
        index = torch.tensor(batch)
        labels = val.labels_of(index)
        code = F.interpolate(model.head(val.tokens_of(index))[1], labels.shape[-2:], mode="bilinear",
                             align_corners=False)  # fmt: skip
        acc.update(model.cluster_probe.log_probs(code, cfg["cluster_alpha"]).argmax(1).cpu(), labels.cpu())
    acc.all_reduce()
    model.train(was_training)
    return float(acc.compute(hungarian=True)["mIoU"])


def train_stego(model: StegoModel, source: TokenSource, nns: torch.Tensor, cfg: dict[str, Any], ctx,
                n_classes: int, val: TokenSource | None = None) -> dict[str, Any]:  # fmt: skip
    """Train head and probes for ``cfg['steps']`` steps (resuming from the checkpoint); returns train stats.

    With a ``val`` source, ``cfg['selection']`` picks the state evaluated (``stats['selection']`` says which):
    ``reference`` (STEGO's: :class:`ReferenceSelection` on :func:`reference_schedule`'s steps), ``best`` (the
    best of a validation every ``val_every`` steps and at the end); ``last`` (or no ``val``) the last step."""
    selection = cfg.get("selection", "last")
    if selection not in SELECTIONS:
        raise ValueError(f"stego config selection={selection!r}: use reference (STEGO's), best or last")
    validating = selection in ("best", "reference") and val is not None
    val_every = int(cfg.get("val_every", 100))
    steps, batch = int(cfg["steps"]), int(cfg["batch_size"])
    if selection == "reference":
        val_steps, save_steps = reference_schedule(len(source.view), batch, steps, val_every,
                                                   int(cfg.get("save_every", 400)))  # fmt: skip
    else:
        val_steps, save_steps = [d for d in range(1, steps + 1) if d % val_every == 0 or d == steps], []
    val_steps, save_steps = set(val_steps), set(save_steps)
    device = torch.device(ctx.device)
    optimizers = {
        "head": torch.optim.Adam(model.head.parameters(), lr=cfg["lr"]),
        "cluster": torch.optim.Adam(model.cluster_probe.parameters(), lr=cfg["probe_lr"]),
        "linear": torch.optim.Adam(model.linear_probe.parameters(), lr=cfg["probe_lr"]),
    }
    ckpt = L.Checkpoint(ctx.work_dir, "stego", L.config_fingerprint({**cfg, "seed": ctx.seed,
                                                                      "world": ctx.world_size}))  # fmt: skip
    start, stats, summed = 0, {}, L.LossSums()
    state = ckpt.load(ctx.log)
    if state is not None:
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optim"][name])
        start, stats = int(state["step"]), dict(state.get("stats", {}))
        summed = L.LossSums.restore(state, start)  # an older checkpoint's sums start at its own step
        best = _selector(selection, cfg, state.get("best"))
        ctx.log(f"stego: resuming at step {start} from {ckpt.path}")
    else:
        best = _selector(selection, cfg)
        L.broadcast_parameters(model)
    D.per_rank_batch(batch)  # the global batch splits evenly across ranks (benchmarks.core.distributed)
    if start >= steps:
        return _select(model, best, stats, validating)
    keys, sizes = [], []
    for step in range(start, steps):
        # STEGO's DataLoader keeps each epoch's last, smaller batch
        items = L.global_batch(len(source.view), batch, step, ctx.seed, keep_partial=True)
        pos = _positives(nns, items, cfg["num_neighbors"], ctx.seed, step)
        keys.append(list(zip(L.local_share(items).tolist(), L.local_share(pos).tolist())))
        sizes.append(len(items))
    stream = B.iterate(source.view, keys, load_images=not source.cached, num_workers=ctx.num_workers)
    weights = cfg["loss"]
    model.train()
    bar = L.progress_bar(steps, start, "stego train", ctx.progress)
    sums = {**dict.fromkeys(("loss", "pos_intra", "pos_inter", "neg_inter", "linear", "cluster"), 0.0), **summed.sums}
    for step, item, n_global in zip(range(start, steps), stream, sizes):
        torch.manual_seed(L.step_seed(ctx.seed, "stego", step))
        noise = L.StepNoise(ctx.seed, "stego", step, n_global, device)
        feats = source.tokens_of(item["index"], item.get("image"))
        feats_pos = source.tokens_of(item["positive"], item.get("pos_image"))
        labels = item["label"].to(device) if "label" in item else source.labels_of(item["index"])
        f, code = model.head(feats, noise)
        f_pos, code_pos = model.head(feats_pos, noise)
        corr = correspondence_losses(f, f_pos, code, code_pos, cfg, noise)
        loss = (weights["pos_inter_weight"] * corr["pos_inter"] + weights["pos_intra_weight"] * corr["pos_intra"]
                + weights["neg_inter_weight"] * corr["neg_inter"]) * cfg["correspondence_weight"]  # fmt: skip
        detached = code.detach()
        linear = linear_probe_loss(model.linear_probe(detached), labels, n_classes)
        cluster = model.cluster_probe.loss(detached, noise.mean)
        total = loss + linear + cluster
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        total.backward()
        L.average_gradients(model.parameters())
        for opt in optimizers.values():
            opt.step()
        values = {"loss": total, "linear": linear, "cluster": cluster, **corr}
        for k in sums:
            sums[k] += float(values[k].detach())
        bar.update(1)
        done = step + 1
        if validating and isinstance(best, ReferenceSelection):
            if done in save_steps:  # the checkpoint callback runs before the step's validation (see the class)
                best.saved(done, model)
            if done in val_steps:
                best.validated(done, validate_cluster_miou(model, val, cfg, n_classes))
        elif validating and done in val_steps:
            best.offer(done, validate_cluster_miou(model, val, cfg, n_classes), model)
        if done % int(cfg["checkpoint_every"]) == 0 or done == steps:
            stats = L.averaged_stats(sums, done - summed.since, "train_")
            ckpt.save({"step": done, "model": model.state_dict(), "best": best.state(),
                       "optim": {k: o.state_dict() for k, o in optimizers.items()}, "stats": stats,
                       **summed.state(sums)})  # fmt: skip
    bar.close()
    return _select(model, best, stats, validating)


def _selector(selection: str, cfg: dict[str, Any], state: dict[str, Any] | None = None):
    if selection == "reference":
        return ReferenceSelection(int(cfg.get("save_top_k", 2)), state)
    return BestCheckpoint(state)


def _select(model: StegoModel, best, stats: dict[str, Any], validating: bool) -> dict[str, Any]:
    """Load the selected state into ``model`` when selecting; the stats say which step was evaluated."""
    if isinstance(best, ReferenceSelection) and validating:
        chosen = best.best()
        if chosen is None:  # no checkpoint was saved (fewer steps than save_every): the last state
            return {**stats, "selection": {**best.record(), "step": None, "evaluated": "last"}}
        model.load_state_dict(chosen["model"])
        return {**stats, "selection": best.record()}
    if not validating or best.model is None:
        return {**stats, "selection": {"mode": "last"}}
    model.load_state_dict(best.model)
    return {**stats, "selection": {"mode": "best", "step": best.step, "val_cluster_miou": round(best.score, 4),
                                   "history": best.history}}  # fmt: skip


# ----------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def flip_averaged_code(backbone, head: StegoHead, images: torch.Tensor, amp_dtype=None) -> torch.Tensor:
    code = head(compute_tokens(backbone, images, amp_dtype))[1]
    code_flip = head(compute_tokens(backbone, images.flip(dims=[3]), amp_dtype))[1]
    return (code + code_flip.flip(dims=[3])) / 2


@torch.no_grad()
def evaluate_stego(backbone, model: StegoModel, view: SegmentationView, cfg: dict[str, Any], ctx,
                   n_classes: int) -> dict[str, float]:  # fmt: skip
    """Cluster and linear scores, without and (when ``cfg['crf']``) with CRF, on the whole of ``view``."""
    device = torch.device(ctx.device)
    model.eval()
    n_clusters = n_classes + int(cfg.get("extra_clusters", 0))
    acc = {name: ConfusionAccumulator(n_classes, n_clusters if name.startswith("cluster") else n_classes)
           for name in ("cluster", "linear", "cluster_crf", "linear_crf")}  # fmt: skip
    params = CRFParams(**cfg.get("crf_params", {}))
    workers = resolve_workers(cfg.get("crf_workers", 0), D.world_size())
    batches = L.eval_batches(len(view), int(cfg["eval_batch_size"]))
    bar = L.progress_bar(len(batches), 0, "stego eval", ctx.progress)
    for item in B.iterate(view, batches, load_images=True, num_workers=ctx.num_workers):
        images, labels = item["image"].to(device), item["label"]
        code = flip_averaged_code(backbone, model.head, images, ctx.amp_dtype)
        code = F.interpolate(code, labels.shape[-2:], mode="bilinear", align_corners=False)
        scores = {
            "cluster": model.cluster_probe.log_probs(code, cfg["cluster_alpha"]).float().cpu(),
            "linear": F.log_softmax(model.linear_probe(code), dim=1).float().cpu(),
        }
        for name, logp in scores.items():
            acc[name].update(logp.argmax(1), labels)
            if cfg["crf"]:
                refined = crf_batch(item["rgb"], logp, params, cfg["crf_backend"], workers)
                acc[f"{name}_crf"].update(refined.argmax(1), labels)
        bar.update(1)
    bar.close()
    out = {}
    for name, accumulator in acc.items():
        if name.endswith("_crf") and not cfg["crf"]:
            continue
        accumulator.all_reduce()
        scores = accumulator.compute(hungarian=name.startswith("cluster"))
        out[name] = scores
    return out


def stego_metrics(results: dict[str, dict[str, float]], crf: bool) -> dict[str, float]:
    """Table 1's columns (with CRF when it ran, as STEGO's evaluation reports) plus the other variants."""
    metrics = {}
    for probe in ("cluster", "linear"):
        main = results[f"{probe}_crf"] if crf else results[probe]
        metrics[f"{probe}_miou"] = main["mIoU"]
        metrics[f"{probe}_acc"] = main["Acc"]
        metrics[f"{probe}_miou_nocrf"] = results[probe]["mIoU"]
        metrics[f"{probe}_acc_nocrf"] = results[probe]["Acc"]
    return metrics


def selection_resolution(cfg: dict[str, Any], patch_size: int) -> int:
    """The validation resolution of the checkpoint selection: ``cfg['val_resolution']`` (STEGO: 320) rounded up
    to a multiple of the backbone's patch size (a ViT/14 takes no 320 input; 322 then)."""
    return patch_multiple(int(cfg.get("val_resolution", cfg["eval_resolution"])), patch_size)


def stego_deviations(cfg: dict[str, Any], selection: dict[str, Any], select_resolution: int | None,
                     n_train_items: int | None = None) -> list[str]:  # fmt: skip
    """How this run departs from STEGO's train_segmentation.py (the record's ``deviations``)."""
    mode = selection.get("mode")
    out = ["negative pairs drawn by a true derangement (STEGO's super_perm can map two items to one)"]
    note = None if n_train_items is None else L.partial_batch_dropped(n_train_items, int(cfg["batch_size"]))
    if note is not None:
        out.append(note)
    if mode == "last":
        out.append("selection=last: the last step is evaluated (STEGO: the best of its top-2 checkpoints by "
                   "lagged validation cluster mIoU)")  # fmt: skip
    elif mode == "best":
        out.append(f"selection=best: the best of a validation every {cfg.get('val_every', 100)} steps and the last "
                   "step (STEGO: checkpoints every 400 steps carrying the previous validation's score, top 2)")
    elif selection.get("evaluated") == "last":
        out.append(f"selection=reference saved no checkpoint in {cfg['steps']} steps (every "
                   f"{cfg.get('save_every', 400)}): the last step is evaluated")  # fmt: skip
    wanted = int(cfg.get("val_resolution", cfg["eval_resolution"]))
    if mode in ("reference", "best") and select_resolution is not None and select_resolution != wanted:
        out.append(f"selection validates at {select_resolution}: val_resolution {wanted} is not a multiple of the "
                   "patch size (STEGO validates at a 320 centre crop)")  # fmt: skip
    return out


def run_stego(backbone, ctx, cfg: dict[str, Any], train_view: SegmentationView, knn_view: SegmentationView,
              val_view: SegmentationView, n_classes: int, loss_variant: str,
              select_view: SegmentationView | None = None) -> dict[str, Any]:  # fmt: skip
    """Train STEGO on ``train_view`` and score it on ``val_view``: ``{"metrics", "hparams"}``. The checkpoint
    selection validates on ``select_view`` (default ``val_view``)."""
    from .tokens import knn_indices

    device = torch.device(ctx.device)
    backbone.eval()  # frozen: its tokens are computed under inference_mode
    nns = knn_indices(backbone, knn_view, ctx, k=int(cfg["knn_k"]), batch_size=int(cfg["eval_batch_size"]) * 4)
    if len(nns) != len(train_view):
        raise ValueError(f"KNN table has {len(nns)} rows but the training view {len(train_view)} items")
    source = TokenSource(backbone, train_view, ctx, cache=cfg["feature_cache"], max_cache_gb=cfg["max_cache_gb"],
                         batch_size=int(cfg["eval_batch_size"]) * 4, desc="stego train tokens")  # fmt: skip
    torch.manual_seed(ctx.seed)
    model = StegoModel(source.channels, n_classes, cfg["code_dim"], cfg["dropout"], cfg.get("extra_clusters", 0))
    model.to(device)
    val = None
    select_view = val_view if select_view is None else select_view
    if cfg.get("selection", "last") in ("best", "reference"):
        val = TokenSource(backbone, select_view, ctx, cache=cfg["feature_cache"], max_cache_gb=cfg["max_cache_gb"],
                          batch_size=int(cfg["eval_batch_size"]) * 4, desc="stego val tokens")  # fmt: skip
    stats = train_stego(model, source, nns, cfg, ctx, n_classes, val)
    crf_name = backend_name(cfg["crf_backend"]) if cfg["crf"] else None
    results = evaluate_stego(backbone, model, val_view, cfg, ctx, n_classes)
    metrics = stego_metrics(results, bool(cfg["crf"]))
    hparams = {
        "loss_variant": loss_variant, "loss": dict(cfg["loss"]), "crf_backend": crf_name,
        "token_source": source.mode, "token_cache_estimate_gb": round(source.estimated_gb, 3),
        "n_train_items": len(train_view), "n_val_items": len(val_view), "steps": int(cfg["steps"]),
        "global_batch": int(cfg["batch_size"]), "world_size": D.world_size(),
        "batch_per_rank": D.per_rank_batch(int(cfg["batch_size"])), "lr": cfg["lr"], "probe_lr": cfg["probe_lr"],
        "selection_resolution": select_view.resolution if val is not None else None,
        "head_precision": "float32",  # the heads and probes train and evaluate in float32, as STEGO's (no autocast)
        **{k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v) for k, v in stats.items()},
    }  # fmt: skip
    details = {name: scores for name, scores in results.items()}
    deviations = stego_deviations(cfg, hparams["selection"], hparams["selection_resolution"], len(train_view))
    return {"metrics": metrics, "hparams": hparams, "details": details, "deviations": deviations}
