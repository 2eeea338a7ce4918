"""SINDER: find and repair the singular defects of DINOv2-style vision transformers."""

from .vit import PRESETS, DinoVisionTransformer, build_vit
from .weights import load_backbone, save_state_dict

__all__ = ["PRESETS", "DinoVisionTransformer", "build_vit", "load_backbone", "save_state_dict"]


def __getattr__(name):
    # The analysis and repair APIs are re-exported lazily so that importing sinder stays cheap.
    lazy = {
        "singular_defect_directions": "sinder.linearize",
        "find_defects": "sinder.defects",
        "neighbor_loss": "sinder.loss",
        "repair_checkpoint": "sinder.repair_job",
        "RepairConfig": "sinder.repair_config",
    }
    if name in lazy:
        import importlib

        module = importlib.import_module(lazy[name])
        return getattr(module, name)
    raise AttributeError(f"module 'sinder' has no attribute {name!r}")
