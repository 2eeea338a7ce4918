"""The module paths of sinder's flat layout (before its packages), kept importable with a FutureWarning.

``import sinder.repair_config`` gives the very module ``sinder.repair.config`` (the same object, so a
monkeypatch through the old path still reaches the code), after a warning naming the new path. Remove an entry
only after a release has warned about it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old path -> new path; the old names that are packages now (sinder.repair, sinder.defects, sinder.plots)
# re-export their former contents from the package itself and are not listed.
MOVED = {
    "sinder.vit": "sinder.models.vit",
    "sinder.backbone": "sinder.models.backbone",
    "sinder.weights": "sinder.models.weights",
    "sinder.checkpoint_formats": "sinder.models.formats",
    "sinder.defective_model": "sinder.models.defective",
    "sinder.constructed": "sinder.models.constructed",
    "sinder.linearize": "sinder.defects.linearize",
    "sinder.census": "sinder.defects.census",
    "sinder.loss": "sinder.defects.loss",
    "sinder.repair_config": "sinder.repair.config",
    "sinder.repair_step": "sinder.repair.step",
    "sinder.repair_job": "sinder.repair.job",
    "sinder.repair_report": "sinder.repair.report",
    "sinder.repair_smoke": "sinder.repair.smoke",
    "sinder.svd": "sinder.repair.svd",
    "sinder.clamp": "sinder.remedies.clamp",
    "sinder.ttr": "sinder.remedies.ttr",
    "sinder.analysis": "sinder.plots.analysis",
    "sinder.commands": "sinder.cli.analyze",
    "sinder.repair_command": "sinder.cli.repair",
    "sinder.ttr_command": "sinder.cli.ttr",
    "sinder.cfg_options": "sinder.cli.cfg_options",
    "sinder.atomic": "sinder.utils.atomic",
    "sinder.device": "sinder.utils.device",
    "sinder.images": "sinder.utils.images",
    "sinder.synthetic_images": "sinder.utils.synthetic_images",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        module = importlib.import_module(self.new)
        self.own = (module.__spec__, module.__loader__)
        return module

    def exec_module(self, module):
        # the import system stamped the old spec on the shared module object: give it its own back
        module.__spec__, module.__loader__ = self.own


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new}; import it from there (the old path will be removed)",
            FutureWarning, stacklevel=3,
        )
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())  # before any finder that could see a stale file
