"""Speed and memory of one SINDER repair iteration: our gradient window vs the official full-graph step.

Both variants compute the same gradients for the lambda trained blocks (tests/test_repair.py checks that);
they differ in how:
- ``official``: every block runs with gradients and with its weight recomposed as U diag(S + eps) V^T on each
  forward; gradients of the early blocks are dropped after backward (the released code).
- ``full_graph_factored``: our factored SVD forward (x V^T, scale, U) but every block still under autograd.
- ``windowed`` (ours, ``sinder.repair.step.SinderStep``): one forward pass that keeps the autograd graph of only the
  last lambda blocks, and a backward chained through them.
The loss layer is pinned to the last block (the worst case for the official step). Timings are medians over
repeats, reported as ratios to ``official`` measured in the same run.

    python -m benchmarks.perf.repair_step --preset dinov2_vits14 --resolution 224 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sinder.defects.loss import neighbor_loss
from sinder.models.vit import build_vit
from sinder.repair.config import RepairConfig
from sinder.repair.step import SinderStep, patch_grid
from sinder.repair.svd import SVDLinear, parametrize_singular_values
from sinder.utils.device import default_device


class RecomposedSVDLinear(nn.Module):
    """The official parametrization: recompose the dense weight from the factors on every forward."""

    def __init__(self, svd: SVDLinear):
        super().__init__()
        self.svd = svd

    def forward(self, x):
        weight = torch.cat([(u * (s + d)) @ vt for u, s, vt, d in self.svd.factors()], dim=0)
        return F.linear(x, weight, self.svd.bias)


def _recomposed(model: nn.Module) -> nn.Module:
    for name, module in list(model.named_modules()):
        if isinstance(module, SVDLinear):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, RecomposedSVDLinear(module))
    return model


def _loss(model, tokens, rows, cols, nu):
    loss, *_ = neighbor_loss(patch_grid(model, tokens, rows, cols), nu, mu=0.5)
    return loss


def full_graph_step(model, image, nu, rows, cols):
    tokens = model.prepare_tokens_with_masks(image)
    for block in model.blocks:
        tokens = block(tokens)
    _loss(model, tokens, rows, cols, nu).backward()


def windowed_step(step: SinderStep, image):
    """Our step (sinder.repair.step.SinderStep): one pass, graph segments of the last lambda blocks."""
    result, loss = step(image)
    step.backward(loss)


def pinned_step(model, directions, window) -> SinderStep:
    """A SinderStep whose loss layer is the last block (detection reports defects only there)."""
    step = SinderStep(model, directions, RepairConfig(limit_layers=window, mu=0.5, sigma=1))
    last = len(model.blocks) - 1
    step._defect_count = lambda grid, layer: 1 if layer == last else 0
    return step


def _measure(fn, model, device):
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, (torch.cuda.max_memory_allocated() if device.type == "cuda" else None)


def _time_interleaved(variants, device, repeats):
    """Median time and peak memory per variant; variants alternate so machine load hits them alike."""
    samples = {name: [] for name in variants}
    for round_index in range(repeats + 1):  # round 0 warms up
        for name, (fn, model) in variants.items():
            elapsed, peak = _measure(fn, model, device)
            if round_index:
                samples[name].append((elapsed, peak))
    return {name: (statistics.median(t for t, _ in s), max((p for _, p in s if p is not None), default=None))
            for name, s in samples.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dinov2_vits14")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--window", type=int, default=10, help="lambda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--out", default=None, help="default results/perf/repair_step_<preset>_<resolution>.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_vit(args.preset, seed=0)
    parametrize_singular_values(model)
    model.to(device)
    rows = cols = args.resolution // model.patch_size
    image = torch.randn(1, 3, args.resolution, args.resolution, device=device)
    nu = F.normalize(torch.randn(model.embed_dim, device=device), dim=0)
    window = min(args.window, len(model.blocks))

    official = _recomposed(copy.deepcopy(model))
    step = pinned_step(model, [nu] * len(model.blocks), window)
    variants = {
        "windowed": (lambda: windowed_step(step, image), model),
        "full_graph_factored": (lambda: full_graph_step(model, image, nu, rows, cols), model),
        "official": (lambda: full_graph_step(official, image, nu, rows, cols), official),
    }
    results = _time_interleaved(variants, device, args.repeats)

    base_time = results["official"][0]
    record = {
        "benchmark": "repair_step",
        "preset": args.preset,
        "resolution": args.resolution,
        "depth": len(model.blocks),
        "window": window,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "variants": {
            name: {"median_s": round(t, 4), "speedup_vs_official": round(base_time / t, 3),
                   "peak_cuda_memory_bytes": peak}
            for name, (t, peak) in results.items()
        },
    }
    out = Path(args.out or f"results/perf/repair_step_{args.preset}_{args.resolution}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
