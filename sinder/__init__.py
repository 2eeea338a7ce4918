"""SINDER: find and repair the singular defects of DINOv2-style vision transformers.

Packages, one layer each (lower layers never import higher ones):
- ``sinder.utils``: atomic writes, devices, image files.
- ``sinder.models``: the ViT, its presets and protocol, checkpoint formats and weights I/O, the constructed
  test models.
- ``sinder.defects``: the defect maths: linearisation and singular defect directions (Section 3), Eq. 5
  detection, the high-norm census, the smoothness loss.
- ``sinder.repair``: Algorithm 1 (config, step, run, job, report).
- ``sinder.remedies``: weight or forward edits that need no training: clamping (Appendix B), test-time
  registers.
- ``sinder.plots``: the paper's figures and the ``analyze`` statistics behind them.
- ``sinder.cli``: the ``sinder-bench`` verbs of the method (repair, analyze, clamp, ttr).
"""

from sinder import _deprecated
from sinder.models.vit import PRESETS, DinoVisionTransformer, build_vit
from sinder.models.weights import load_backbone, save_state_dict

__all__ = ["PRESETS", "DinoVisionTransformer", "build_vit", "load_backbone", "save_state_dict"]

_deprecated.install()


def __getattr__(name):
    # The analysis and repair APIs are re-exported lazily so that importing sinder stays cheap.
    lazy = {
        "singular_defect_directions": "sinder.defects.linearize",
        "find_defects": "sinder.defects.detect",
        "neighbor_loss": "sinder.defects.loss",
        "repair_checkpoint": "sinder.repair.job",
        "RepairConfig": "sinder.repair.config",
    }
    if name in lazy:
        import importlib

        module = importlib.import_module(lazy[name])
        return getattr(module, name)
    raise AttributeError(f"module 'sinder' has no attribute {name!r}")
