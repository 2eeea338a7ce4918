"""A smoke suite run twice, in this process and under torchrun as 2 gloo processes on the CPU, for the tests
that check that a task's multi-process training records the metrics of one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.core.results import load_records
from benchmarks.core.runner import run_suite

REPO = Path(__file__).resolve().parents[1]


def one_and_two_processes(tmp_path: Path, suite: str, cfg_options: dict[str, Any] | None = None,
                          backbone: str = "dinov2_tiny_defective", timeout: float = 300) -> tuple[dict, dict]:  # fmt: skip
    """``{task: record}`` of ``suite`` (profile smoke, CPU) run in-process and by ``torchrun --nproc_per_node=2``
    with the same cache (the synthetic datasets are generated once) and ``cfg_options``."""
    cache, options = tmp_path / "cache", dict(cfg_options or {})
    single = run_suite(suite, [backbone], profile="smoke", out=tmp_path / "one", cache_dir=cache, device="cpu",
                       progress=False, cfg_options=options)  # fmt: skip
    assert not single.failed, single.failed
    args = ["--suite", suite, "--profile", "smoke", "--backbone", backbone, "--device", "cpu",
            "--cache-dir", str(cache), "--no-progress", "--out", str(tmp_path / "two")]  # fmt: skip
    if options:
        args += ["--cfg-options", *(f"{key}={value}" for key, value in options.items())]
    # This checkout's code, not an installed copy; one thread per process (two processes share the cores).
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "benchmarks.cli", "run", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = ({r["task"]: r for r in load_records(tmp_path / name)} for name in ("one", "two"))
    assert one.keys() == two.keys() and one, (one.keys(), two.keys())
    for task in one:
        assert one[task]["device"]["world_size"] == 1 and two[task]["device"]["world_size"] == 2, task
    return one, two
