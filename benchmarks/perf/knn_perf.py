"""KNN and feature-extraction speed: ours (chunked torch) against a naive full-matrix KNN and the
reference algorithm (DINOv2's: one-hot (n, k, C) product, then a sum per k), on the same features in one run.

    python -m benchmarks.perf.knn_perf [--train 50000 --test 2000 --dim 384 --classes 1000] [--out results/perf]

Writes ``knn.json`` (timings in seconds, ratios against ours, machine) atomically into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.classification.knn import knn_classify
from sinder.utils.atomic import atomic_write_text


def naive_knn(train, train_labels, test, ks, T, num_classes):
    """Whole similarity matrix at once, full sort, then weights: the memory-hungry baseline."""
    sims = test @ train.T
    order = sims.argsort(dim=1, descending=True)[:, : max(ks)]
    top = sims.gather(1, order)
    weights = torch.softmax(top / T, dim=1)
    labels = train_labels[order]
    return {k: torch.zeros(test.shape[0], num_classes).scatter_add_(1, labels[:, :k], weights[:, :k]) for k in ks}


def reference_knn(train, train_labels, test, ks, T, num_classes, chunk=256):
    """The reference's algorithm: per test chunk, top-k, a dense one-hot x weight product, a sum per k."""
    out = {k: [] for k in ks}
    max_k = max(ks)
    for i in range(0, test.shape[0], chunk):
        sims = test[i : i + chunk] @ train.T
        top, idx = sims.topk(max_k, dim=1, largest=True, sorted=True)
        one_hot = F.one_hot(train_labels[idx], num_classes=num_classes).float()
        prod = one_hot * torch.softmax(top / T, dim=1).unsqueeze(-1)
        for k in ks:
            out[k].append(prod[:, :k].sum(dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def _time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def knn_timings(n_train, n_test, dim, classes, ks=(10, 20, 100, 200), T=0.07, repeats=2, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    train = F.normalize(torch.randn(n_train, dim, generator=gen), dim=1)
    test = F.normalize(torch.randn(n_test, dim, generator=gen), dim=1)
    train_labels = torch.randint(0, classes, (n_train,), generator=gen)
    ks = [k for k in ks if k <= n_train]
    impls = {
        "ours_torch": lambda: knn_classify(train, train_labels, test, ks, T, classes, backend="torch"),
        "reference_algorithm": lambda: reference_knn(train, train_labels, test, ks, T, classes),
        "naive_full_matrix": lambda: naive_knn(train, train_labels, test, ks, T, classes),
    }
    times, outputs = {}, {}
    for name, fn in impls.items():
        times[name], outputs[name] = _time(fn, repeats)
    ref = outputs["reference_algorithm"]
    max_err = {name: max(float((out[k] - ref[k]).abs().max()) for k in ks) for name, out in outputs.items()}
    return {
        "shape": {"train": n_train, "test": n_test, "dim": dim, "classes": classes, "ks": ks, "T": T},
        "seconds": times,
        "time_ratio_to_ours_torch": {name: t / times["ours_torch"] for name, t in times.items()},
        "max_abs_score_diff_vs_reference": max_err,
    }


def extraction_throughput(batch: int = 32, batches: int = 4, resolution: int = 224, preset: str = "dinov2_tiny"):
    """Images per second of a (randomly initialised) preset: the bare class-token forward under inference_mode,
    and the whole :func:`extract_features` path (DataLoader, stacking) on in-memory images."""
    from torch.utils.data import TensorDataset

    from benchmarks.core.features import extract_features
    from sinder.models.vit import build_vit

    model = build_vit(preset, seed=0)
    images = torch.randn(batch * batches, 3, resolution, resolution)

    def cls(m, x):
        return m.get_intermediate_layers(x, n=1, return_class_token=True)[0][1]

    with torch.inference_mode():
        cls(model, images[:2])  # warm-up
        start = time.perf_counter()
        for i in range(batches):
            cls(model, images[i * batch : (i + 1) * batch])
        forward_s = time.perf_counter() - start
    dataset = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    start = time.perf_counter()
    extract_features(model, dataset, cls, batch_size=batch, progress=False)
    pipeline_s = time.perf_counter() - start
    return {"preset": preset, "resolution": resolution, "batch": batch, "images": len(images),
            "forward_images_per_s": len(images) / forward_s, "extract_features_images_per_s": len(images) / pipeline_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=50000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--extract-preset", default="dinov2_tiny")
    parser.add_argument("--extract-resolution", type=int, default=224)
    parser.add_argument("--extract-batch", type=int, default=32)
    parser.add_argument("--extract-batches", type=int, default=4)
    parser.add_argument("--out", default="results/perf")
    args = parser.parse_args(argv)
    result = {
        "benchmark": "knn",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "load_average_1min": os.getloadavg()[0]},  # shared machines: read timings with the load  # fmt: skip
        "knn": knn_timings(args.train, args.test, args.dim, args.classes, repeats=args.repeats),
        "feature_extraction": extraction_throughput(
            args.extract_batch, args.extract_batches, args.extract_resolution, args.extract_preset
        ),
    }
    path = Path(args.out) / "knn.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
