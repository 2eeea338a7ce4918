"""The GPU check: how far one GPU is from the goals that make a paper reproduction feasible, in one JSON.

    python -m benchmarks.perf.gpu_check --out results/perf/          # one H100/H200: a few minutes
    python -m benchmarks.perf.gpu_check --tiny --out /tmp/check/     # the same code at toy sizes on a CPU

Measures, each in its own try-block (an OOM in one still writes the others):

* ``feature_extraction_224`` / ``feature_extraction_518``: ViT-g/14 (random weights) class-token forward in bf16
  autocast under inference mode, images/s and the fraction of the GPU's dense bf16 peak by an analytic FLOP
  count (:func:`vit_forward_flops`; the peak from :data:`BF16_PEAK_TFLOPS` by device name, ``null`` with the
  reason when the name is not in the table). Goal (issue 16): >= 60% of peak.
* ``repair``: SINDER repair iterations/s at 518 px, lambda 10, on random ViT-g weights, with the real
  ``sinder.repair.svd.parametrize_singular_values`` (timed: the SVD set-up; also timed: the singular defect directions,
  ``sinder.defects.linearize.singular_defect_directions`` with 100k samples), ``sinder.repair.step.SinderStep`` (defect
  detection on every block) and SGD as ``RepairRun`` sets it up. Random weights have no defects, so the loss
  layer is pinned to the last block (the worst case: the most blocks run before the loss). Peak memory.
  Goal (issue 16): 30,000 iterations within an hour, i.e. <= 120 ms an iteration.
* ``knn_imagenet``: ``benchmarks.classification.knn.evaluate_knn`` on 1,281,167 x 1536 train features (CPU, as
  the task keeps them) against 50,000 queries on the device, ks 10/20/100/200, 1000 classes. Goal: < 30 s.
* ``segmentation_linear_iteration``: mmseg linear probe training iterations (the ADE20k linear config, 512 px
  crops, the config's batch) with ViT-g through ``benchmarks.segmentation`` on the synthetic ADE20k twin;
  seconds per iteration after warm-up. Goal (derived, not in the issue): 40k iterations within 24 h.
* ``jpeg_decode``: ImageNet-sized JPEG decode + the eval and train transforms through a DataLoader, images/s per
  worker. Goal (derived): the workers this machine has can feed the 224 px feature extraction.

Every measurement carries ``goal`` (text, value, source), ``verdict`` ("pass", "miss", "unknown" when the goal
cannot be computed, "error" with the error) and its numbers. ``--tiny`` runs the same code at toy sizes; its
verdicts are "not measured at scale" (``"scale": "tiny"`` in the JSON; what the goal would say at the toy sizes
is in ``outcome_at_these_sizes``). ``git_commit``: $SINDER_BENCH_GIT_COMMIT where the copy has no ``.git``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.core.preprocessing import family_preprocessing
from benchmarks.core.results import git_commit
from benchmarks.core.task_config import MAX_LOADER_WORKERS
from sinder.defects.linearize import DEFAULT_N_SAMPLES
from sinder.models.adapter import num_prefix_tokens
from sinder.utils.atomic import atomic_write_text
from sinder.utils.device import default_device
from sinder.utils.images import DEFAULT_RESOLUTION

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s per SKU: (regular expression on
# torch.cuda.get_device_name(), SKU, streaming multiprocessors of that SKU, peak, source), first match wins.
# NVIDIA's datasheets quote "with sparsity"; the dense peak is half of that. The SM count is what the device must
# report (torch.cuda.get_device_properties().multi_processor_count) for the row to apply: it tells the SXM5 H100
# (132 SMs) from the PCIe card (114) where a name alone could mislead; SM counts from the Hopper/Ampere/Ada
# architecture whitepapers (H100: nvidia.com/en-us/data-center/h100, "NVIDIA H100 Tensor Core GPU Architecture";
# A100: "NVIDIA A100 Tensor Core GPU Architecture"; L40S: "NVIDIA ADA GPU Architecture"). Dense bf16 =
# SMs x 4096 FLOP/clock (Hopper; 2048 on Ampere) x the boost clock of the datasheet (H100 SXM5: 132 x 4096 x
# 1.83 GHz = 989.4 TFLOP/s). A name that matches no row (an unlisted H100 SKU, "NVIDIA H100" alone) has no peak.
BF16_PEAK_TFLOPS: list[tuple[str, str, int, float, str]] = [
    (r"GH200", "GH200", 132, 989.5,
     "NVIDIA GH200 datasheet (nvidia.com/en-us/data-center/grace-hopper-superchip): 1,979 TFLOPS bf16 sparse"),
    (r"H200 NVL", "H200 NVL", 132, 835.0,
     "NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): 1,671 TFLOPS bf16 sparse, H200 NVL"),
    (r"H200$", "H200 SXM", 132, 989.5,
     "NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): 1,979 TFLOPS bf16 sparse, H200 SXM"),
    (r"H100 NVL", "H100 NVL", 132, 835.0,
     "NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): 1,671 TFLOPS bf16 sparse, H100 NVL"),
    (r"H100 PCIe", "H100 PCIe", 114, 756.5,
     "NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): 1,513 TFLOPS bf16 sparse, H100 PCIe"),
    (r"H100 (80GB HBM3|SXM)", "H100 SXM5", 132, 989.5,
     "NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): 1,979 TFLOPS bf16 sparse, H100 SXM"),
    (r"A100", "A100", 108, 312.0, "NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): 312 TFLOPS bf16 dense"),
    (r"L40S", "L40S", 142, 362.05,
     "NVIDIA L40S datasheet (nvidia.com/en-us/data-center/l40s): 362.05 TFLOPS bf16 dense"),
]  # fmt: skip
# The commit of the checkout, where the device's copy has no .git: set by benchmarks/perf/gpu_check_device.sh
# from the file its prepare step writes (.whl/GIT_COMMIT).
GIT_COMMIT_ENV = "SINDER_BENCH_GIT_COMMIT"
# The verdict of every measurement of a --tiny run: toy sizes say nothing about full-scale goals.
TINY_VERDICT = "not measured at scale"

REPAIR_GOAL_S = 3600 / 30_000  # a full ViT-g repair (30k iterations) within an hour on one H100
EXTRACTION_GOAL_FRACTION = 0.60
KNN_GOAL_S = 30.0
SEG_GOAL_S = 24 * 3600 / 40_000  # derived: the 40k-iteration mmseg schedule within a day


@dataclass
class Sizes:
    """What each measurement runs on; ``full`` is the issue's, ``tiny`` the same code on a CPU in seconds."""

    scale: str
    preset: str
    extraction: list[tuple[int, int, int]]  # (resolution, batch, timed batches)
    repair_resolution: int
    repair_window: int
    repair_iterations: int
    direction_samples: int  # Gaussian samples of the singular defect directions' least squares (official: 100k)
    knn: dict[str, Any]
    seg_crop: int | None  # None: the config's 512
    seg_batch: int | None  # None: the config's
    seg_workers: int
    seg_iterations: int
    jpeg_images: int
    jpeg_size: tuple[int, int]
    jpeg_workers: list[int] = field(default_factory=list)


FULL = Sizes(
    scale="full", preset="dinov2_vitg14", extraction=[(224, 64, 20), (518, 16, 10)], repair_resolution=DEFAULT_RESOLUTION,
    repair_window=10, repair_iterations=20, direction_samples=DEFAULT_N_SAMPLES,
    knn={"n_train": 1_281_167, "n_test": 50_000, "dim": 1536, "classes": 1000, "ks": [10, 20, 100, 200],
         "chunk_size": 1024},
    seg_crop=None, seg_batch=None, seg_workers=MAX_LOADER_WORKERS, seg_iterations=10, jpeg_images=512, jpeg_size=(500, 375), jpeg_workers=[1, 4],
)  # fmt: skip
TINY = Sizes(
    scale="tiny", preset="dinov2_tiny_swiglu", extraction=[(224, 2, 2), (518, 1, 1)], repair_resolution=112,
    repair_window=3, repair_iterations=2, direction_samples=2000,
    knn={"n_train": 3000, "n_test": 200, "dim": 32, "classes": 10, "ks": [10, 20], "chunk_size": 64},
    seg_crop=56, seg_batch=2, seg_workers=0, seg_iterations=4, jpeg_images=8, jpeg_size=(80, 60), jpeg_workers=[1],
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ helpers
def vit_forward_flops(model: nn.Module, resolution: int, batch: int = 1) -> dict[str, int]:
    """Multiply-add FLOPs (2 per MAC) of one forward of a ``sinder.models.vit`` ViT through all blocks, by parts.

    Counted: the patch-embedding convolution, every ``nn.Linear`` of every block (qkv, proj, the MLP or SwiGLU
    linears) on all tokens, and attention's two matmuls (QK^T and AV: 2 N^2 D each). Not counted: norms,
    activations, softmax, position-embedding interpolation (elementwise, a fraction of a percent).
    """
    p = model.patch_size
    patches = (resolution // p) ** 2
    tokens = num_prefix_tokens(model) + patches
    dim = model.embed_dim
    patch_embed = 2 * patches * 3 * p * p * dim
    linear = attention = 0
    for block in model.blocks:
        linear += sum(2 * tokens * m.in_features * m.out_features for m in block.modules() if isinstance(m, nn.Linear))
        attention += 2 * (2 * tokens * tokens * dim)
    parts = {"patch_embed": patch_embed, "linear": linear, "attention": attention}
    return {k: v * batch for k, v in parts.items()} | {"total": (patch_embed + linear + attention) * batch}


def bf16_peak(device: torch.device) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s or None, where it comes from or why it is unknown), by the device's name and
    SM count."""
    if device.type != "cuda":
        return None, f"no bf16 tensor-core peak for device type {device.type!r} (the table covers NVIDIA GPUs)"
    props = torch.cuda.get_device_properties(device)
    return peak_for_name(props.name, props.multi_processor_count)


def peak_for_name(name: str, sms: int | None = None) -> tuple[float | None, str]:
    """The SKU's dense bf16 peak for a device ``name`` reporting ``sms`` SMs (None: not checked)."""
    import re

    for pattern, sku, sku_sms, tflops, source in BF16_PEAK_TFLOPS:
        if re.search(pattern, name):
            if sms is not None and sms != sku_sms:
                return None, (f"device {name!r} reports {sms} SMs, the {sku} has {sku_sms}: another SKU than "
                              "BF16_PEAK_TFLOPS (benchmarks/perf/gpu_check.py) assumes; add its row")  # fmt: skip
            return tflops, f"{sku}: {source}"
    return None, f"device {name!r} is not in BF16_PEAK_TFLOPS (benchmarks/perf/gpu_check.py): add its datasheet peak"


def source_commit() -> tuple[str, str]:
    """(commit, where it comes from): $SINDER_BENCH_GIT_COMMIT when set (a copy without .git, e.g. the device's),
    else git in this checkout ("unknown" without one)."""
    given = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if given:
        return given, f"${GIT_COMMIT_ENV}"
    commit = git_commit()
    return commit, "git" if commit != "unknown" else f"no .git here and no ${GIT_COMMIT_ENV}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30, "process peak RSS (whole run so far)"


def _goal(text: str, value: float | None, source: str) -> dict[str, Any]:
    return {"text": text, "value": value, "source": source}


def _verdict(ok: bool | None) -> str:
    return "unknown" if ok is None else ("pass" if ok else "miss")


def _autocast(device: torch.device):
    # bf16 where the check is about bf16 (GPUs); CPU autocast to bf16 is slow and not what the goals are about.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------- measurements
def measure_extraction(sizes: Sizes, device: torch.device, resolution: int, batch: int, batches: int) -> dict:
    from sinder.models.vit import build_vit

    model = build_vit(sizes.preset, seed=0).to(device).eval()
    images = torch.randn(batch, 3, resolution, resolution, device=device)

    def forward():  # what the KNN task extracts: the last block's normed class token
        return model.get_intermediate_layers(images, n=1, return_class_token=True)[0][1]

    with torch.inference_mode(), _autocast(device):
        for _ in range(2):  # warm-up: kernels, allocator
            forward()
        _sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            forward()
        _sync(device)
        seconds = time.perf_counter() - start
    flops = vit_forward_flops(model, resolution, batch=1)
    images_per_s = batch * batches / seconds
    achieved = images_per_s * flops["total"] / 1e12
    peak, peak_source = bf16_peak(device)
    fraction = achieved / peak if peak else None
    return {
        "preset": sizes.preset, "resolution": resolution, "batch": batch, "timed_batches": batches,
        "dtype": "bfloat16 autocast" if device.type == "cuda" else "float32",
        "images_per_s": images_per_s, "flops_per_image": flops, "achieved_tflops": achieved,
        "bf16_peak_tflops": peak, "bf16_peak_source": peak_source, "fraction_of_bf16_peak": fraction,
        "goal": _goal(">= 60% of the GPU's dense bf16 peak", EXTRACTION_GOAL_FRACTION, "issue 16"),
        "verdict": _verdict(None if fraction is None else fraction >= EXTRACTION_GOAL_FRACTION),
    }  # fmt: skip


def _pinned_step(model: nn.Module, window: int):
    """The real ``SinderStep`` (detection runs on every block) with the loss layer pinned to the last block."""
    from sinder.repair.config import RepairConfig
    from sinder.repair.step import SinderStep

    nu = F.normalize(torch.randn(model.embed_dim, generator=torch.Generator().manual_seed(0)), dim=0)
    nu = nu.to(next(model.parameters()).device)
    # mu 0.5: random weights have no token 4 sigma out along nu; a loss needs some flagged tokens.
    step = SinderStep(model, [nu] * len(model.blocks), RepairConfig(limit_layers=window, mu=0.5, sigma=1))
    detect, last = step._defect_count, len(model.blocks) - 1
    step._defect_count = lambda grid, layer: 1 if (detect(grid, layer) >= 0 and layer == last) else 0
    return step


def _time_directions(model: nn.Module, n_samples: int, device: torch.device) -> tuple[float | None, str | None]:
    """Seconds of the singular defect directions' set-up (Section 3, the official least squares) on the device;
    (None, error) when it fails, so the repair timing still runs."""
    from sinder.defects.linearize import singular_defect_directions

    try:
        _sync(device)
        start = time.perf_counter()
        singular_defect_directions(model, n_samples=n_samples, device=device)
        _sync(device)
        return time.perf_counter() - start, None
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"


def measure_repair(sizes: Sizes, device: torch.device) -> dict:
    from sinder.models.vit import build_vit
    from sinder.repair.config import RepairConfig
    from sinder.repair.svd import parametrize_singular_values

    cfg = RepairConfig()
    _reset_peak(device)
    model = build_vit(sizes.preset, seed=0).to(device).eval()
    directions_s, directions_error = _time_directions(model, sizes.direction_samples, device)
    _sync(device)
    start = time.perf_counter()
    parametrize_singular_values(model, cfg.trainable)  # the SVD of every block linear, on the device
    _sync(device)
    svd_s = time.perf_counter() - start
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    step = _pinned_step(model, sizes.repair_window)
    image = torch.randn(1, 3, sizes.repair_resolution, sizes.repair_resolution, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32  # as RepairRun sets it on CUDA

    def iteration() -> float | None:
        optimizer.zero_grad(set_to_none=True)
        result, loss = step(image)
        if loss is not None:
            step.backward(loss)
            optimizer.step()
        return result.loss

    try:
        iteration()  # warm-up
        _sync(device)
        start = time.perf_counter()
        losses = [iteration() for _ in range(sizes.repair_iterations)]
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if any(v is None for v in losses):
        raise RuntimeError("the pinned repair step produced no loss: the timing would not include a backward")
    per_iter = seconds / sizes.repair_iterations
    peak, how = _peak_gib(device)
    return {
        "preset": sizes.preset, "resolution": sizes.repair_resolution, "lambda": sizes.repair_window,
        "loss_layer": "pinned to the last block (worst case)", "iterations_timed": sizes.repair_iterations,
        "svd_setup_s": svd_s, "directions_setup_s": directions_s, "directions_samples": sizes.direction_samples,
        "directions_error": directions_error, "iterations_per_s": 1 / per_iter, "seconds_per_iteration": per_iter,
        "projected_30k_iterations_h": per_iter * 30_000 / 3600, "peak_memory_gib": peak, "peak_memory_measure": how,
        "trainable_parameters": sum(p.numel() for p in params), "last_loss": losses[-1],
        "goal": _goal("30,000 iterations within 1 h: <= 0.12 s an iteration", REPAIR_GOAL_S, "issue 16"),
        "verdict": _verdict(per_iter <= REPAIR_GOAL_S),
    }  # fmt: skip


def measure_knn(sizes: Sizes, device: torch.device) -> dict:
    from benchmarks.classification.knn import evaluate_knn

    s = sizes.knn
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    gen = torch.Generator(device=gen_device).manual_seed(0)
    train = torch.empty(s["n_train"], s["dim"])  # on the CPU, as the task keeps train features
    for i in range(0, s["n_train"], 65536):  # generated in slices on the device: no 8 GB temporary
        rows = min(65536, s["n_train"] - i)
        train[i : i + rows] = F.normalize(torch.randn(rows, s["dim"], generator=gen, device=gen_device), dim=1).cpu()
    train_labels = torch.randint(0, s["classes"], (s["n_train"],))
    test = F.normalize(torch.randn(s["n_test"], s["dim"], generator=gen, device=gen_device), dim=1).to(device)
    test_labels = torch.randint(0, s["classes"], (s["n_test"],))
    _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    result = evaluate_knn(train, train_labels, test, test_labels, ks=s["ks"], T=0.07, num_classes=s["classes"],
                          backend="auto", chunk_size=s["chunk_size"])  # fmt: skip
    _sync(device)
    seconds = time.perf_counter() - start
    peak, how = _peak_gib(device)
    return {
        **s, "seconds": seconds, "backend": result["hparams"]["backend"], "top1_random_features": result["metrics"]["top1"],
        "peak_memory_gib": peak, "peak_memory_measure": how,
        "goal": _goal("ImageNet-scale KNN (1.28M x 1536 vs 50k) under 30 s", KNN_GOAL_S, "issue 16"),
        "verdict": _verdict(seconds < KNN_GOAL_S),
    }  # fmt: skip


def measure_segmentation(sizes: Sizes, device: torch.device) -> dict:
    from benchmarks.data.synth import write_synthetic
    from benchmarks.perf.seg_probe_perf import _clock_hook
    from benchmarks.segmentation.config import load_config, resolve_config
    from benchmarks.segmentation.mmseg_env import ensure_mmseg
    from benchmarks.segmentation.task import dataset_base
    from benchmarks.segmentation.train import _quiet, build_runner, build_segmentor
    from sinder.models.vit import build_vit

    ensure_mmseg()
    backbone = build_vit(sizes.preset, seed=0).to(device).eval()
    overrides: dict[str, Any] = {"iterations": sizes.seg_iterations, "warmup": 1, "log_level": "ERROR"}
    if sizes.seg_crop:
        overrides["crop"] = sizes.seg_crop
    if sizes.seg_batch:
        overrides["batch_size"] = sizes.seg_batch
    with tempfile.TemporaryDirectory(prefix="gpu-check-seg-") as tmp:
        tmp = Path(tmp)
        write_synthetic("ade20k", tmp / "data", seed=0)
        cfg = resolve_config(load_config("ade20k", "linear"), preprocessing=DINOV2,
                             data_root=dataset_base("ade20k", tmp / "data"),
                             embed_dim=backbone.embed_dim, work_dir=tmp / "work", device_type=device.type,
                             num_workers=min(sizes.seg_workers, os.cpu_count() or 1), overrides=overrides)  # fmt: skip
        cfg.default_hooks.checkpoint = None  # no checkpoint write inside the timed iterations
        segmentor = build_segmentor(cfg, backbone)
        clock = _clock_hook()
        _reset_peak(device)
        with _quiet():
            runner = build_runner(cfg, segmentor, name="gpu-check")
            runner.register_hook(clock)
            runner.train()
        ends = clock.ends["wall"]
    half = len(ends) // 2
    per_iter = (ends[-1] - ends[half - 1]) / (len(ends) - half)  # second half: after warm-up and data start
    peak, how = _peak_gib(device)
    return {
        "preset": sizes.preset, "config": "ade20k linear", "crop": sizes.seg_crop or 512,
        "batch": int(cfg.train_dataloader.batch_size),
        "dataloader_workers": int(cfg.train_dataloader.num_workers), "iterations": len(ends), "seconds_per_iteration": per_iter,
        "projected_40k_iterations_h": per_iter * 40_000 / 3600, "peak_memory_gib": peak, "peak_memory_measure": how,
        "goal": _goal("40k iterations within 24 h: <= 2.16 s an iteration", SEG_GOAL_S,
                      "derived here (the issue sets no goal for it)"),
        "verdict": _verdict(per_iter <= SEG_GOAL_S),
    }  # fmt: skip


def _write_jpegs(root: Path, n: int, size: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        folder = root / split / "n00000001"
        folder.mkdir(parents=True)
        for i in range(n if split == "train" else 1):
            # smooth noise compresses like a photo (not like white noise, not like a flat colour)
            small = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize(size, Image.BILINEAR)
            image.save(folder / f"img_{i:05d}.JPEG", quality=90)


def measure_jpeg(sizes: Sizes, device: torch.device, extraction_images_per_s: float | None) -> dict:
    from torch.utils.data import DataLoader

    from benchmarks.classification.datasets import open_imagenet
    from benchmarks.classification.transforms import eval_transform, train_transform
    from benchmarks.core.preprocessing import family_preprocessing

    pre = family_preprocessing("dinov2", 14)  # the loader's cost: any mean/std costs the same

    out: dict[str, Any] = {"images": sizes.jpeg_images, "image_size": list(sizes.jpeg_size), "per_worker": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-jpeg-") as tmp:
        _write_jpegs(Path(tmp), sizes.jpeg_images, sizes.jpeg_size)
        for name, transform in (("eval_256_224", eval_transform(256, 224, mean=pre.mean, std=pre.std)),
                                ("train_224", train_transform(224, mean=pre.mean, std=pre.std))):
            dataset = open_imagenet(tmp, "train", transform)
            rates = {}
            for workers in sizes.jpeg_workers:
                loader = DataLoader(dataset, batch_size=16, num_workers=workers)
                start = time.perf_counter()
                count = sum(len(labels) for _, labels in loader)  # worker start-up included, as in a real epoch
                rates[str(workers)] = count / (time.perf_counter() - start) / workers
            out["per_worker"][name] = {"workers_tried": sizes.jpeg_workers, "images_per_s_per_worker": rates}
    per_worker = max(out["per_worker"]["eval_256_224"]["images_per_s_per_worker"].values())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    needed = math.ceil(extraction_images_per_s / per_worker) if extraction_images_per_s else None
    out.update({
        "cpus": cpus, "eval_images_per_s_per_worker": per_worker,
        "extraction_224_images_per_s": extraction_images_per_s, "workers_needed_for_extraction_224": needed,
        "goal": _goal("the CPUs can feed the 224 px feature extraction (workers needed <= CPUs)", None,
                      "derived here (the issue sets no goal for it)"),
        "verdict": _verdict(None if needed is None else needed <= cpus),
    })  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------- driver
def _device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "machine": platform.machine(), "cpu": platform.processor() or platform.machine(),
                            "torch_threads": torch.get_num_threads()}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count)  # fmt: skip
    peak, source = bf16_peak(device)
    info.update(bf16_peak_tflops=peak, bf16_peak_source=source)
    return info


def run_checks(sizes: Sizes, device: torch.device, only: list[str] | None = None,
               on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every measurement in its own try-block: a failure is recorded with its error and the rest still run.
    ``on_result(measurements so far)`` after each one (the driver writes them: a run cut off by a time limit
    keeps what it measured)."""
    measurements: dict[str, Any] = {}
    checks: list[tuple[str, Callable[[], dict]]] = [
        (f"feature_extraction_{res}", lambda r=res, b=batch, n=n: measure_extraction(sizes, device, r, b, n))
        for res, batch, n in sizes.extraction
    ]
    checks += [
        ("repair", lambda: measure_repair(sizes, device)),
        ("knn_imagenet", lambda: measure_knn(sizes, device)),
        ("segmentation_linear_iteration", lambda: measure_segmentation(sizes, device)),
        ("jpeg_decode", lambda: measure_jpeg(
            sizes, device, (measurements.get("feature_extraction_224") or {}).get("images_per_s"))),
    ]  # fmt: skip
    for name, fn in checks:
        if only and name not in only:
            continue
        print(f"gpu_check: {name} ...", flush=True)
        start = time.perf_counter()
        try:
            measurements[name] = fn()
        except Exception as err:  # an OOM or a broken piece must not lose the other measurements
            measurements[name] = {"verdict": "error", "error": f"{type(err).__name__}: {err}",
                                  "traceback": traceback.format_exc(limit=4)}  # fmt: skip
        measurements[name]["wall_s"] = time.perf_counter() - start
        if sizes.scale != "full" and measurements[name]["verdict"] != "error":
            # toy sizes against full-scale goals: what the goal would say here is kept apart, as no verdict
            measurements[name]["outcome_at_these_sizes"] = measurements[name]["verdict"]
            measurements[name]["verdict"] = TINY_VERDICT
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"gpu_check: {name}: {measurements[name]['verdict']} ({measurements[name]['wall_s']:.1f} s)", flush=True)
        if on_result is not None:
            on_result(measurements)
    return measurements


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/perf", help="folder for gpu_check.json (gpu_check_tiny.json)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: the same code in seconds on a CPU")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this measurement")
    args = parser.parse_args(argv)
    device = torch.device(default_device(args.device))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu (with --tiny)")
    sizes = TINY if args.tiny else FULL
    started = time.perf_counter()
    path = Path(args.out) / ("gpu_check_tiny.json" if args.tiny else "gpu_check.json")
    commit, commit_source = source_commit()
    header = {
        "benchmark": "gpu_check", "scale": sizes.scale, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": f"toy sizes: every verdict is {TINY_VERDICT!r}" if args.tiny else "sizes of issue 16",
        "git_commit": commit, "git_commit_source": commit_source, "device": _device_info(device),
        "sizes": asdict(sizes),
    }  # fmt: skip

    def write(measurements: dict[str, Any], complete: bool) -> dict[str, str]:
        verdicts = {name: m["verdict"] for name, m in measurements.items()}
        result = {**header, "complete": complete, "verdicts": verdicts, "measurements": measurements,
                  "total_wall_s": time.perf_counter() - started}  # fmt: skip
        atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")
        return verdicts

    measurements = run_checks(sizes, device, args.only, on_result=lambda done: write(done, complete=False))
    verdicts = write(measurements, complete=True)
    print(json.dumps(verdicts, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
