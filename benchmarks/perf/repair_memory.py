"""Peak memory of a SINDER repair step: ViT-g/14 at 518 px with gradients through lambda = 10 blocks.

The paper fine-tunes on a 32 GB V100. This measures, on whatever device runs it, the memory of the pieces:
the SVD-parametrized model (frozen factors U, S, V^T instead of the weights), and one repair step whose
loss layer is pinned to the last block (the deepest, so all lambda blocks keep activations), with and without
activation checkpointing. On CUDA it reads ``torch.cuda.max_memory_allocated``; on a CPU the process's peak
resident set (``ru_maxrss``), which includes the Python runtime.

    python -m benchmarks.perf.repair_memory --preset dinov2_vitg14 --resolution 518
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.perf.repair_step import pinned_step
from sinder.models.vit import build_vit
from sinder.repair.svd import parametrize_singular_values
from sinder.utils.atomic import atomic_write_text
from sinder.utils.device import default_device
from sinder.utils.images import DEFAULT_RESOLUTION

GIB = 1024**3


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _tensor_bytes(model) -> float:
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values()) / GIB


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dinov2_vitg14")
    parser.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--out", default=None, help="default results/perf/repair_memory_<preset>_<resolution>.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    record: dict = {"benchmark": "repair_memory", "preset": args.preset, "resolution": args.resolution,
                    "window": args.window, "torch": torch.__version__, "machine": platform.machine(),
                    "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                    "measure": "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"}
    started = time.perf_counter()
    model = build_vit(args.preset, seed=0).to(device)
    record["weights_gib"] = round(_tensor_bytes(model), 3)
    parametrize_singular_values(model)
    record["svd_seconds"] = round(time.perf_counter() - started, 1)
    record["parametrized_model_gib"] = round(_tensor_bytes(model), 3)
    record["peak_after_parametrize_gib"] = round(_peak(device), 3)

    image = torch.randn(1, 3, args.resolution, args.resolution, device=device)
    nu = F.normalize(torch.randn(model.embed_dim, device=device), dim=0)
    step = pinned_step(model, [nu] * len(model.blocks), args.window)
    for checkpointing in (True, False):  # RSS is a high-water mark: the lighter variant first
        step.config.grad_checkpointing = checkpointing
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        result, loss = step(image)
        step.backward(loss)
        key = "step_with_checkpointing" if checkpointing else "step"
        record[f"{key}_seconds"] = round(time.perf_counter() - t0, 2)
        record[f"{key}_peak_gib"] = round(_peak(device), 3)
    print(json.dumps(record, indent=2))
    out = Path(args.out or f"results/perf/repair_memory_{args.preset}_{args.resolution}.json")
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
