"""``dinov2_tiny_standin``: the smoke stand-in, a trained tiny DINOv2 with artifacts planted by their mechanism.

Unlike ``dinov2_tiny_defective`` (random weights plus a constructed amplifier, :mod:`sinder.models.defective`),
its features are trained (:mod:`sinder.models.standin.train`: class-token classification and per-patch
reconstruction on the synthetic ImageNet twin), so its patch tokens carry local content a dense head can read.
Its artifacts are planted after training (:mod:`sinder.models.standin.circuit`, into units that the
training scaffold :mod:`sinder.models.standin.scaffold` kept free): in a middle block, patches
whose pixel energy is far below their image's mean get a large vector along one direction ``u``; after every
later LayerNorm their own content is a small fraction of the token, so a dense head loses it, and what remains
besides ``u`` is what later attention gathered from the whole image. ``dinov2_tiny_standin_reg`` is the same
training with 4 register tokens and no trigger. The weights ship as small float16 files beside this module,
each recording the training script's sha256 and arguments.
"""

from sinder.models.standin.build import (
    artifact_direction,
    standin_reg_state_dict,
    standin_state_dict,
    trained_model,
    trigger_constants,
)
from sinder.models.standin.circuit import Trigger
from sinder.models.standin.scaffold import CONFIG, PRESET_NAME, REG_CONFIG, REG_PRESET_NAME

__all__ = ["CONFIG", "PRESET_NAME", "REG_CONFIG", "REG_PRESET_NAME", "Trigger", "artifact_direction",
           "standin_reg_state_dict", "standin_state_dict", "trained_model", "trigger_constants"]  # fmt: skip
