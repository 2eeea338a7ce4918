"""timm and open_clip for the parity tests, without torchvision.

Both are test-only references (never runtime dependencies), and neither is in the dev extras: they declare
torchvision, and the torchvision that pip resolves beside torch 2.13.0+cpu (0.28.0) fails to import
(``operator torchvision::nms does not exist``), so ``pip install -e '.[dev]'`` would break. Their ViT code does not
need torchvision: it imports a few names at module level (``FrozenBatchNorm2d``, transforms) that the model
constructors and forwards used here never call. So:

- the library is found on ``sys.path``, or in the folder ``$SINDER_TEST_LIBS`` (``pip install --no-deps --target
  DIR timm==1.0.31 open_clip_torch==3.3.0``); absent, the tests skip with that instruction;
- when torchvision does not import, a stand-in serves those module-level names during the import only (any use of
  them raises), and is removed again afterwards so that nothing else in the test session sees it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest

ENV = "SINDER_TEST_LIBS"
PINS = {"timm": "timm==1.0.31", "open_clip": "open_clip_torch==3.3.0"}  # the versions the tests were written against


class _Unavailable(type):
    """A torchvision name that exists for ``from torchvision... import X`` and fails when used."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {cls.__name__} is not available in the parity tests")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Unavailable(name, (), {})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _torchvision_imports() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or present but built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_reference(name: str):
    """``timm`` or ``open_clip`` for a parity test (skips with how to install it when absent)."""
    if name in sys.modules:
        return sys.modules[name]
    extra = os.environ.get(ENV)
    if extra and extra not in sys.path:
        sys.path.append(extra)
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed: a test-only reference; `pip install --no-deps --target DIR "
                    f"{PINS[name]}` and set {ENV}=DIR (torchvision is not needed)", allow_module_level=True)
    if _torchvision_imports():
        return importlib.import_module(name)
    finder = _StandInFinder()
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path.remove(finder)
        for module in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[module]
