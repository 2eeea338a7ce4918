"""Make the OpenMMLab stack usable here: the mmcv.ops stand-in, safe checkpoint loading, our registrations.

Call :func:`ensure_mmseg` before building anything from an mmseg config; it is idempotent and cheap after the
first call. See third_party/mmcv/README.md for the breakages this works around and the versions checked.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings

REQUIRED = {"mmengine": "0.10.7", "mmcv": "2.1.0", "mmseg": "1.2.2"}
INSTALL_HINT = "pip install mmengine==0.10.7 mmcv-lite==2.1.0 mmsegmentation==1.2.2 ftfy regex"
_ready = False


def missing_packages() -> list[str]:
    """Import names of the segmentation stack that are not installed (cheap: no import)."""
    names = ["mmengine", "mmcv", "mmseg", "ftfy", "regex", "cv2"]
    return [name for name in names if importlib.util.find_spec(name) is None]


def _history_buffer_getattr(obj, name: str):
    """The one ``getattr`` an mmengine checkpoint needs: a registered statistics method of ``HistoryBuffer``.

    HistoryBuffer pickles its ``statistics_methods`` as ``getattr(HistoryBuffer, 'min')`` and so on. Allowing
    the real ``builtins.getattr`` would let a crafted file walk to any object, so the unpickler gets this
    narrow stand-in under that name instead.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer and name in {"min", "max", "mean", "current", *HistoryBuffer._statistics_methods}:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f"checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer statistics methods are allowed"
    )


def allow_mmengine_checkpoints() -> list:
    """Allow-list what an mmengine Runner pickles into its checkpoints, for ``torch.load(weights_only=True)``.

    mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that means weights_only=True,
    and its own checkpoints (the message hub's HistoryBuffers: numpy arrays and scalars, statistics methods)
    fail to reload, which breaks ``resume``. Only these classes are allowed; weights_only is never turned off.
    """
    import numpy as np
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer

    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core
    dtype_classes = [type(np.dtype(code)) for code in ("float64", "float32", "float16", "int64", "int32", "bool")]
    allowed = [
        HistoryBuffer,
        (_history_buffer_getattr, "builtins.getattr"),
        np.ndarray,
        np.dtype,
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        *dtype_classes,
    ]
    torch.serialization.add_safe_globals(allowed)
    return allowed


def ensure_mmseg() -> None:
    """Install the mmcv.ops stand-in, import mmseg's registries and register our backbone and head."""
    global _ready
    if _ready:
        return
    missing = missing_packages()
    if missing:
        raise ModuleNotFoundError(
            f"supervised segmentation needs {', '.join(missing)} (not installed): {INSTALL_HINT}", name=missing[0]
        )
    from benchmarks.segmentation.mmcv_compat import install_mmcv_ops_shim

    install_mmcv_ops_shim()
    with warnings.catch_warnings():
        # mmcv-lite has no deformable attention; nothing here uses it, so its import warning is noise.
        warnings.filterwarnings("ignore", message=".*MultiScaleDeformableAttention.*")
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=False)
    import benchmarks.segmentation.backbone  # noqa: F401  (registers FrozenViTBackbone)
    import benchmarks.segmentation.head  # noqa: F401  (registers BNLinearHead)
    import benchmarks.segmentation.resume  # noqa: F401  (registers ResumableIterBasedTrainLoop, RNGStateHook)
    import benchmarks.segmentation.schedule  # noqa: F401  (registers MMCVPolyLR)
    import benchmarks.segmentation.sync_bn  # noqa: F401  (registers CollectiveSyncBN)

    allow_mmengine_checkpoints()
    _ready = True
