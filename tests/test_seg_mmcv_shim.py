"""The mmcv.ops stand-in and the checkpoint allow-list that make mmseg 1.2.2 work on mmcv-lite and torch 2.13."""

import io
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")

from benchmarks.segmentation import mmcv_compat  # noqa: E402
from benchmarks.segmentation.mmseg_env import ensure_mmseg  # noqa: E402


@pytest.fixture(scope="module")
def shim():
    ensure_mmseg()
    if mmcv_compat.full_mmcv_available():
        pytest.skip("full mmcv with compiled ops is installed: the stand-in steps aside (tested below)")
    return sys.modules["mmcv.ops"]


def test_mmseg_models_import_and_register_our_modules(shim):
    from mmseg.registry import MODELS

    assert isinstance(shim, mmcv_compat.MmcvOpsShim)
    for name in ("EncoderDecoder", "SegTTAModel", "FrozenViTBackbone", "BNLinearHead", "PointHead", "SETRUPHead"):
        assert MODELS.get(name) is not None, name
    heads = [name for name in MODELS.module_dict if name.endswith("Head")]
    assert len(heads) >= 30  # every decode head of mmseg 1.2.2 registers (37 at the time of writing)


def test_point_sample_matches_grid_sample(shim):
    from mmcv.ops import point_sample

    torch.manual_seed(0)
    feats = torch.randn(2, 3, 5, 7)
    points = torch.rand(2, 11, 2)  # (x, y) in [0, 1]
    expected = F.grid_sample(feats, (2 * points - 1).unsqueeze(2), align_corners=False).squeeze(3)
    torch.testing.assert_close(point_sample(feats, points), expected)


def test_unknown_op_raises_module_not_found_naming_it(shim):
    with pytest.raises(ModuleNotFoundError, match=r"mmcv\.ops\.DeformConv2d .*full mmcv"):
        from mmcv.ops import DeformConv2d  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match="CUDA focal loss"):
        shim.sigmoid_focal_loss(torch.zeros(1), torch.zeros(1))


def test_dunder_names_raise_attribute_error(shim):
    assert not hasattr(shim, "__file__")  # mmengine's registry probes this on every module
    with pytest.raises(AttributeError):
        shim.__wrapped__  # noqa: B018


def test_steps_aside_when_full_mmcv_is_installed(monkeypatch):
    monkeypatch.delitem(sys.modules, "mmcv.ops", raising=False)
    monkeypatch.setattr(mmcv_compat, "full_mmcv_available", lambda: True)
    assert mmcv_compat.install_mmcv_ops_shim() is False
    assert "mmcv.ops" not in sys.modules


def test_installs_when_missing_and_is_idempotent(monkeypatch):
    monkeypatch.delitem(sys.modules, "mmcv.ops", raising=False)
    monkeypatch.setattr(mmcv_compat, "full_mmcv_available", lambda: False)
    assert mmcv_compat.install_mmcv_ops_shim() is True
    first = sys.modules["mmcv.ops"]
    assert mmcv_compat.install_mmcv_ops_shim() is True
    assert sys.modules["mmcv.ops"] is first


def test_mmengine_checkpoint_state_loads_with_weights_only(shim):
    import numpy as np
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("test_seg_ckpt")
    for step in range(3):
        hub.update_scalar("train/loss", np.float64(0.5 / (step + 1)))
    buffer = io.BytesIO()
    torch.save({"message_hub": hub.state_dict(), "meta": {"iter": 3}}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    history = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert history.current() == pytest.approx(0.5 / 3)
    assert history.mean() == pytest.approx((0.5 + 0.25 + 0.5 / 3) / 3)


class _Evil:
    # A pickle that walks from an allowed class to something else through getattr.
    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer

        return (getattr, (HistoryBuffer, "__init__"))


def test_allow_list_refuses_other_getattr(shim):
    buffer = io.BytesIO()
    torch.save({"x": _Evil()}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError, match="only HistoryBuffer statistics methods"):
        torch.load(buffer, weights_only=True)
