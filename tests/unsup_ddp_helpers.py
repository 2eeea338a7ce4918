"""Running ``benchmarks.cli run`` under torchrun (2 gloo processes on CPU) beside an in-process run, for the
tests that compare the records of N processes with those of one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks.core.results import load_records
from benchmarks.core.runner import run_suite

REPO = Path(__file__).resolve().parents[1]


def cfg_option_args(options: dict[str, object]) -> list[str]:
    """``--cfg-options`` arguments of ``{"task.key": scalar}`` (booleans as YAML writes them)."""
    text = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items()}
    return ["--cfg-options", *(f"{k}={v}" for k, v in text.items())] if text else []


def one_and_two_processes(tmp_path: Path, task: str, backbone: str, options: dict[str, object],
                          timeout: float = 300) -> tuple[dict, dict]:  # fmt: skip
    """The record of ``task`` (smoke profile) run in this process and under ``torchrun --nproc_per_node=2``."""
    cache = tmp_path / "cache"
    single = run_suite(task, [backbone], profile="smoke", out=tmp_path / "one", cache_dir=cache, device="cpu",
                       progress=False, cfg_options=options)  # fmt: skip
    assert not single.failed, single.failed
    args = ["--suite", task, "--profile", "smoke", "--backbone", backbone, "--device", "cpu", "--cache-dir",
            str(cache), "--no-progress", "--out", str(tmp_path / "two"), *cfg_option_args(options)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "benchmarks.cli", "run", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (one,), (two,) = load_records(tmp_path / "one"), load_records(tmp_path / "two")
    return one, two
