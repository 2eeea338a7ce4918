"""The ImageNet linear probe task under torchrun: 2 gloo processes record the metrics of 1 process (smoke)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.core.results import load_records
from benchmarks.core.runner import run_suite

REPO = Path(__file__).resolve().parents[1]


def test_two_processes_record_the_metrics_of_one(tmp_path):
    cache = tmp_path / "cache"
    args = ["--suite", "imagenet_linear", "--profile", "smoke", "--backbone", "dinov2_tiny_defective",
            "--device", "cpu", "--cache-dir", str(cache), "--no-progress"]  # fmt: skip
    single = run_suite("imagenet_linear", ["dinov2_tiny_defective"], profile="smoke", out=tmp_path / "one",
                       cache_dir=cache, device="cpu", progress=False)  # fmt: skip
    assert not single.failed
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "benchmarks.cli", "run", *args, "--out", str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (one,), (two,) = load_records(tmp_path / "one"), load_records(tmp_path / "two")
    assert one["device"]["world_size"] == 1 and two["device"]["world_size"] == 2
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    # every one of the heads, not only the best
    heads_one, heads_two = one["details"]["heads"], two["details"]["heads"]
    assert heads_one.keys() == heads_two.keys() and len(heads_one) == 52
    for name, acc in heads_one.items():
        assert heads_two[name] == pytest.approx(acc, abs=1e-6), name
    assert len({round(v["top1"], 4) for v in heads_one.values()}) > 1  # heads differ: the comparison says something
    # the effective (global) batch and the scaled learning rate are the same; the split is recorded
    for key in ("global_batch", "lr_scaled", "head"):
        assert two["hparams"][key] == one["hparams"][key], key
    assert (one["hparams"]["world_size"], one["hparams"]["batch_per_rank"]) == (1, 16)
    assert (two["hparams"]["world_size"], two["hparams"]["batch_per_rank"]) == (2, 8)
