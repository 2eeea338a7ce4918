"""A stand-in for ``mmcv.ops`` when mmcv has no compiled extension (``mmcv-lite``).

mmsegmentation 1.2.2 imports ``mmcv.ops`` at module level in a few places (point sampling, focal loss, the SAN
head), so ``import mmseg.models`` fails under mmcv-lite even though the models we use need no compiled op. The
stand-in serves ``point_sample`` (mmcv's own pure-PyTorch implementation, loaded from the installed mmcv) and
a ``sigmoid_focal_loss`` that raises when called; any other op raises ``ModuleNotFoundError`` naming it (some
mmseg heads catch exactly that class to mark themselves unavailable), and dunder names raise
``AttributeError`` (mmengine's registry probes ``hasattr(module, '__file__')``). When a full mmcv with
``mmcv._ext`` is installed, nothing is replaced. Versions checked: third_party/mmcv/README.md.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

SHIM_NAME = "mmcv.ops"
# The names mmseg imports from mmcv.ops at module level; only point_sample is ever called on our code paths.
SERVED = ("point_sample", "sigmoid_focal_loss")
FULL_MMCV_HINT = (
    "it needs the compiled ops of full mmcv (pip install mmcv==2.1.0 built from source, or a prebuilt wheel for "
    "your torch/CUDA); this environment has mmcv-lite, whose mmcv.ops is a stand-in serving only "
    + ", ".join(SERVED)
)


def full_mmcv_available() -> bool:
    """Whether the installed mmcv has its compiled extension (``mmcv._ext``), as mmengine checks it."""
    if importlib.util.find_spec("mmcv") is None:
        return False
    return importlib.util.find_spec("mmcv._ext") is not None


def _sigmoid_focal_loss(*args, **kwargs):
    raise ModuleNotFoundError(f"mmcv.ops.sigmoid_focal_loss (the CUDA focal loss) is not available: {FULL_MMCV_HINT}")


class MmcvOpsShim(types.ModuleType):
    """``mmcv.ops`` with only the pure-PyTorch ops; unknown ops fail loudly with the fix."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        # ModuleNotFoundError (an ImportError): `from mmcv.ops import X` surfaces it unchanged, and the heads
        # that guard their import with `except ModuleNotFoundError` register as unavailable.
        raise ModuleNotFoundError(f"mmcv.ops.{name} is not available: {FULL_MMCV_HINT}", name=f"mmcv.ops.{name}")


def _load_point_sample_module(mmcv_root: Path) -> types.ModuleType:
    # mmcv/ops/point_sample.py imports only torch; load that file alone, without mmcv/ops/__init__.py.
    path = mmcv_root / "ops" / "point_sample.py"
    if not path.is_file():
        raise ModuleNotFoundError(f"mmcv.ops stand-in: {path} is missing; reinstall mmcv-lite==2.1.0")
    spec = importlib.util.spec_from_file_location(f"{SHIM_NAME}.point_sample", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def install_mmcv_ops_shim() -> bool:
    """Put the stand-in in ``sys.modules['mmcv.ops']`` unless full mmcv is installed; True when it did.

    Idempotent. Raises ``ModuleNotFoundError`` when mmcv is not installed at all.
    """
    current = sys.modules.get(SHIM_NAME)
    if current is not None:
        return isinstance(current, MmcvOpsShim)
    if importlib.util.find_spec("mmcv") is None:
        raise ModuleNotFoundError(
            "mmcv is not installed: supervised segmentation needs mmcv-lite==2.1.0 (or full mmcv 2.1.0), "
            "mmengine==0.10.7 and mmsegmentation==1.2.2", name="mmcv"
        )
    if full_mmcv_available():
        return False
    import mmcv

    point_sample_module = _load_point_sample_module(Path(mmcv.__file__).parent)
    shim = MmcvOpsShim(SHIM_NAME, __doc__)
    shim.point_sample = point_sample_module.point_sample
    shim.sigmoid_focal_loss = _sigmoid_focal_loss
    sys.modules[f"{SHIM_NAME}.point_sample"] = point_sample_module
    sys.modules[SHIM_NAME] = shim
    mmcv.ops = shim  # attribute access `mmcv.ops.X` as after a real import
    return True
