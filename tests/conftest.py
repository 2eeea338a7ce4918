import json
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY = SHARED / "parity"


def parity_path(name: str) -> Path:
    path = PARITY / name
    if not path.exists():
        pytest.skip(f"parity fixture {path} not present (../shared/parity beside the checkout)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores on CI; keep torch from oversubscribing when pytest-xdist is not used.
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


def load_parity_model(name: str):
    """(architecture dict, state dict without the ``model.`` prefix, all tensors) of a DINOv2 parity fixture."""
    from safetensors.torch import load_file

    from sinder.vit import ARCH_DEFAULTS

    tensors = load_file(str(parity_path(f"{name}.safetensors")))
    arch = json.loads(parity_path(f"{name}.json").read_text())
    arch = {k: v for k, v in arch.items() if k in ARCH_DEFAULTS}
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return arch, state, tensors
