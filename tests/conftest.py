import json
import os
from pathlib import Path

import pytest
import torch

# Outputs of the reference implementations on small inputs, shipped with the tests (fixtures/parity/README.md).
PARITY = Path(__file__).resolve().parent / "fixtures" / "parity"


def parity_path(name: str) -> Path:
    """A parity fixture's path; a missing one fails the test (these are the checks that matter most)."""
    path = PARITY / name
    if not path.exists():
        pytest.fail(f"parity fixture {path} is missing: it ships with the repository (git checkout tests/fixtures)")
    return path


# The tests use tiny matrices: one intra-op thread is as fast on an idle machine and far faster on a loaded one
# (CI shares 2 cores with the processes that distributed tests spawn).
torch.set_num_threads(1)
# `run` pairs in this process (not `--jobs auto` worker processes): tests patch tasks here and count their calls.
os.environ["SINDER_BENCH_JOBS"] = "1"


@pytest.fixture(scope="module")
def sinder_parity():
    """The official SINDER fixture: (tensors, settings, the 9 x 11 x 96 planted token map without class token)."""
    from safetensors.torch import load_file

    tensors = load_file(str(parity_path("sinder_tiny_swiglu.safetensors")))
    meta = json.loads(parity_path("sinder_tiny_swiglu.json").read_text())
    tokens = tensors["tokens"][0, 1:].reshape(meta["H"], meta["W"], -1)
    return tensors, meta, tokens


def load_parity_model(name: str):
    """(architecture dict, state dict without the ``model.`` prefix, all tensors) of a DINOv2 parity fixture."""
    from safetensors.torch import load_file

    from sinder.models.vit import ARCH_DEFAULTS

    tensors = load_file(str(parity_path(f"{name}.safetensors")))
    arch = json.loads(parity_path(f"{name}.json").read_text())
    arch = {k: v for k, v in arch.items() if k in ARCH_DEFAULTS}
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return arch, state, tensors


def run_smoke_suite(suite: str, out: Path, cache: Path, tasks, backbone: str = "dinov2_tiny_defective"):
    """`sinder-bench run --suite SUITE --profile smoke` on one backbone: (exit code, {task: first record or None})."""
    from benchmarks.cli import main

    code = main(["run", "--suite", suite, "--profile", "smoke", "--backbone", backbone,
                 "--out", str(out), "--cache-dir", str(cache), "--no-progress"])  # fmt: skip
    records = {}
    for task in tasks:
        files = sorted((out / task).glob("*.json"))
        records[task] = json.loads(files[0].read_text()) if files else None
    return code, records
