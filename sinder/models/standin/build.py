"""The shipped stand-in weights, loaded, with the artifact trigger planted (the base) or without (the register
release). See :mod:`sinder.models.standin` for what each is."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from sinder.models.standin.circuit import Trigger, plant_trigger
from sinder.models.standin.scaffold import CONFIG, REG_CONFIG, impose_scaffold, reserved_directions
from sinder.models.vit import build_vit

HERE = Path(__file__).parent
WEIGHTS = {"base": HERE / "dinov2_tiny_standin.safetensors", "reg": HERE / "dinov2_tiny_standin_reg.safetensors"}
CALIBRATION_IMAGES = 16  # synthetic photographs at 112 px: enough patches for a stable median


def shipped_metadata(which: str = "base") -> dict[str, str]:
    """The metadata of a shipped weights file: ``script_sha256``, ``arguments`` and ``summary`` (JSON)."""
    from safetensors import safe_open

    with safe_open(str(WEIGHTS[which]), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _trained_state(which: str) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(WEIGHTS[which])).items()}


def calibration_images(size: int = 112) -> Tensor:
    """The deterministic photographs that calibrate the trigger (ImageNet-normalised, N x 3 x size x size)."""
    from sinder.utils.images import resize_center_crop, to_normalized_tensor
    from sinder.utils.synthetic_images import synthetic_photos

    photos = synthetic_photos(CALIBRATION_IMAGES, size=size + 16, seed=12_345)
    return torch.stack([to_normalized_tensor(resize_center_crop(p, size)) for p in photos])


def trained_model(which: str = "base"):
    """The trained model as shipped (eval mode): the scaffold, no trigger."""
    model = build_vit(CONFIG if which == "base" else REG_CONFIG)
    model.load_state_dict(_trained_state(which), strict=True)
    # float16 storage leaves rounding residues (~1e-3 relative) along the reserved directions; imposing the
    # scaffold again makes them exact, so no token has a u component before the trigger (else Eq. 5, which is
    # scale-free, can flag rounding noise along u in the early blocks)
    impose_scaffold(model)
    return model.eval()


@lru_cache(maxsize=1)
def _planted() -> tuple[dict[str, Tensor], str]:
    with torch.device("cpu"):  # real tensors even when asked from a meta-device context (a weights-file check)
        model = trained_model("base")
        constants = plant_trigger(model, calibration_images(), Trigger())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, json.dumps(constants)


def standin_state_dict() -> dict[str, Tensor]:
    """``dinov2_tiny_standin``: the trained weights with the artifact trigger planted."""
    return {k: v.clone() for k, v in _planted()[0].items()}


def trigger_constants() -> dict[str, float]:
    """The planted trigger's calibrated constants (floor, slope, gain, ...)."""
    return json.loads(_planted()[1])


def standin_reg_state_dict() -> dict[str, Tensor]:
    """``dinov2_tiny_standin_reg``: the same training with 4 registers and no trigger."""
    with torch.device("cpu"):
        return trained_model("reg").state_dict()


def artifact_direction() -> Tensor:
    """The unit direction ``u`` the artifacts are written along."""
    return reserved_directions(CONFIG["embed_dim"])["u"].clone()
