"""Training speed of the segmentation linear probe with and without cached backbone features, in one run.

    python -m benchmarks.perf.seg_probe_perf [--iterations 100 --crop 84 --batch 4 --repeats 5] [--out results/perf]

The smoke profile's ADE20k linear probe (mmengine Runner, the real training loop) on the tiny defective backbone
and the synthetic ADE20k twin, in three variants, interleaved over ``--repeats`` rounds:

* ``augmented_uncached``: the config's augmented pipeline, backbone on every crop (smoke before the cache);
* ``unaugmented_uncached``: fixed resize + center crop, backbone on every crop (isolates the cache's share);
* ``unaugmented_cached``: the same crops, maps computed once per image (the smoke profile now).

Iterations/s are taken from a hook's clocks at each iteration's end, wall and this process's CPU time (the
latter barely moved by other users of a shared machine): ``overall`` over all iterations (the cache's first
pass included), ``steady`` over the second half. Each variant's best round is reported; also the single-scale
mIoU of its first round (the reduced augmentation's effect on quality), how far the cached run's trained head is
from the uncached run's on the same crops (end-to-end check that cached maps are the backbone's), and one
uncached backbone forward per batch (the most the cache can save per iteration). Writes ``seg_probe.json``
atomically into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.core.preprocessing import family_preprocessing
from sinder.utils.atomic import atomic_write_text

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14

BACKBONE = "dinov2_tiny_defective"
VARIANTS = {
    # name: (un-augmented pipeline, feature cache)
    "augmented_uncached": (False, False),
    "unaugmented_uncached": (True, False),
    "unaugmented_cached": (True, True),
}


def _clock_hook():
    from mmengine.hooks import Hook

    class IterClock(Hook):
        """Wall-clock time at the start of training and at the end of every training iteration."""

        priority = "VERY_LOW"  # after the optimizer step and every other hook of the iteration

        def __init__(self):
            self.start: dict[str, float] = {}
            self.ends: dict[str, list[float]] = {"wall": [], "cpu": []}

        def _now(self) -> dict[str, float]:
            # CPU time of this process too: other users of a shared machine slow the wall clock, not it.
            return {"wall": time.perf_counter(), "cpu": time.process_time()}

        def before_train(self, runner) -> None:
            self.start = self._now()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            for clock, value in self._now().items():
                self.ends[clock].append(value)

        def rates(self) -> dict[str, float]:
            out = {}
            for clock, ends in self.ends.items():
                n, half = len(ends), len(ends) // 2
                out[f"{clock}_overall"] = n / (ends[-1] - self.start[clock])
                out[f"{clock}_steady"] = (n - half) / (ends[-1] - ends[half - 1])
            return out

    return IterClock()


def variant_config(data_root: Path, work_dir: Path, *, unaugmented: bool, cache: bool, iterations: int,
                   crop: int, batch: int):  # fmt: skip
    from benchmarks.segmentation.config import load_config, resolve_config, unaugmented_train_pipeline
    from benchmarks.segmentation.task import SegADE20kLinear

    smoke = SegADE20kLinear().config("smoke")["overrides"]
    warmup = min(smoke["warmup"], iterations - 1)  # short timing runs keep a valid schedule
    overrides = {**smoke, "iterations": iterations, "warmup": warmup, "crop": crop, "batch_size": batch,
                 "feature_cache": cache}  # fmt: skip
    cfg = resolve_config(load_config("ade20k", "linear"), preprocessing=DINOV2,
                         data_root=data_root, embed_dim=96, work_dir=work_dir,
                         device_type="cpu", overrides=overrides)  # fmt: skip
    if unaugmented and not cache:
        cfg.train_augmentation = unaugmented_train_pipeline(cfg)
    cfg.default_hooks.checkpoint = None  # no checkpoint write inside the timed iterations
    return cfg


def time_variant(cfg, backbone, evaluate: bool) -> dict:
    from benchmarks.segmentation.train import _iou_metrics, _quiet, build_runner, build_segmentor

    segmentor = build_segmentor(cfg, backbone)
    clock = _clock_hook()
    with _quiet():
        runner = build_runner(cfg, segmentor, name="perf")
        runner.register_hook(clock)
        runner.train()
        metrics = _iou_metrics(runner.test()) if evaluate else None
    cache = segmentor.backbone.feature_cache
    return {"rates": clock.rates(), "miou": None if metrics is None else metrics["mIoU"],
            "cache": None if cache is None else cache.stats.as_dict(),
            "head": {k: v.detach().clone() for k, v in segmentor.decode_head.state_dict().items()}}  # fmt: skip


def backbone_batch_ms(backbone, crop: int, batch: int, repeats: int = 20) -> float:
    """Best wall time of one uncached backbone forward on a training batch: what the cache can save per iteration."""
    from benchmarks.segmentation.backbone import FrozenViTBackbone

    wrapper = FrozenViTBackbone(layers=4).attach(backbone)
    x = torch.randn(batch, 3, crop, crop)
    wrapper(x)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        wrapper(x)
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def _max_abs_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def measure(iterations: int = 100, crop: int = 84, batch: int = 4, repeats: int = 3, seed: int = 0) -> dict:
    from benchmarks.data.synth import write_synthetic
    from benchmarks.segmentation.mmseg_env import ensure_mmseg
    from benchmarks.segmentation.task import dataset_base
    from sinder.models.weights import load_backbone

    ensure_mmseg()
    backbone = load_backbone(BACKBONE)
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="seg-probe-perf-") as tmp:
        tmp = Path(tmp)
        synth = write_synthetic("ade20k", tmp / "data", seed=seed)
        data_root = dataset_base("ade20k", tmp / "data")
        for round_ in range(repeats):
            for name, (unaugmented, cache) in VARIANTS.items():
                cfg = variant_config(data_root, tmp / f"{name}-{round_}", unaugmented=unaugmented, cache=cache,
                                     iterations=iterations, crop=crop, batch=batch)  # fmt: skip
                runs[name].append(time_variant(cfg, backbone, evaluate=round_ == 0))
        augmentation = {name: variant_config(data_root, tmp / "x", unaugmented=u, cache=c, iterations=iterations,
                                             crop=crop, batch=batch).train_augmentation
                        for name, (u, c) in VARIANTS.items()}  # fmt: skip
    metrics = list(runs["unaugmented_cached"][0]["rates"])
    best = {name: {m: max(r["rates"][m] for r in rs) for m in metrics} for name, rs in runs.items()}
    cached = best["unaugmented_cached"]
    return {
        "setup": {
            "backbone": BACKBONE,
            "weights_sha256": backbone.weights_sha256,
            "dataset": "synthetic ade20k twin",
            "n_train": len(synth.truths["train"]),
            "iterations": iterations,
            "crop": crop,
            "batch": batch,
            "repeats": repeats,
            "seed": seed,
        },  # fmt: skip
        "train_augmentation": augmentation,
        "iterations_per_s_best": best,
        "speedup_of_cached": {name: {m: cached[m] / b[m] for m in metrics} for name, b in best.items()},
        "backbone_forward_ms_per_batch": backbone_batch_ms(backbone, crop, batch),
        "miou_single_scale_first_round": {name: rs[0]["miou"] for name, rs in runs.items()},
        # Same seed, same crops: the cached run must train the same head as the uncached one (up to rounding).
        "head_max_abs_diff_cached_vs_uncached": _max_abs_diff(
            runs["unaugmented_cached"][0]["head"], runs["unaugmented_uncached"][0]["head"]
        ),  # fmt: skip
        "cache_stats": runs["unaugmented_cached"][0]["cache"],
        "rounds": {name: [r["rates"] for r in rs] for name, rs in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--crop", type=int, default=84)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    parser.add_argument("--out", default="results/perf")
    parser.add_argument("--name", default="seg_probe.json")
    args = parser.parse_args(argv)
    if args.iterations < 4:
        parser.error(f"--iterations {args.iterations}: need at least 4 to time a second half")
    torch.set_num_threads(args.threads)
    result = {
        "benchmark": "seg_probe",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_1min": os.getloadavg()[0],
        },  # fmt: skip
        **measure(args.iterations, args.crop, args.batch, args.repeats),
    }
    path = Path(args.out) / args.name
    atomic_write_text(path, json.dumps(result, indent=2))
    keys = (
        "iterations_per_s_best",
        "speedup_of_cached",
        "backbone_forward_ms_per_batch",
        "head_max_abs_diff_cached_vs_uncached",
    )
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
