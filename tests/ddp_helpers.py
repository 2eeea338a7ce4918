"""Multi-process tests on the CPU: a command under torchrun (gloo), and a smoke suite run in this process and
as 2 torchrun processes, for the tests that check that a task's multi-process run records the metrics of one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=NPROC ARGS`` from the repository root, with this checkout's code
    first on the path (not an installed copy) and one thread per process; fails the test unless it exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def one_and_two_processes(tmp_path: Path, suite: str, cfg_options: dict[str, Any] | None = None,
                          backbone: str = "dinov2_tiny_defective", timeout: float = 300) -> tuple[dict, dict]:  # fmt: skip
    """``{task: record}`` of ``suite`` (profile smoke, CPU) run in-process and by ``torchrun --nproc_per_node=2``
    with the same cache (the synthetic datasets are generated once) and ``cfg_options``."""
    from benchmarks.core.results import load_records
    from benchmarks.core.runner import run_suite

    cache, options = tmp_path / "cache", dict(cfg_options or {})
    single = run_suite(suite, [backbone], profile="smoke", out=tmp_path / "one", cache_dir=cache, device="cpu",
                       progress=False, cfg_options=options)  # fmt: skip
    assert not single.failed, single.failed
    args = ["--suite", suite, "--profile", "smoke", "--backbone", backbone, "--device", "cpu",
            "--cache-dir", str(cache), "--no-progress", "--out", str(tmp_path / "two")]  # fmt: skip
    if options:  # booleans as YAML writes them
        text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
        args += ["--cfg-options", *(f"{key}={value}" for key, value in text.items())]
    torchrun("-m", "benchmarks.cli", "run", *args, timeout=timeout)
    one, two = ({r["task"]: r for r in load_records(tmp_path / name)} for name in ("one", "two"))
    assert one.keys() == two.keys() and one, (one.keys(), two.keys())
    for task in one:
        assert one[task]["device"]["world_size"] == 1 and two[task]["device"]["world_size"] == 2, task
    return one, two
