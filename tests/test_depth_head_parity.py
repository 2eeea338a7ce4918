"""DINOv2's own depth heads (Linear 1, Linear 4, DPT) on small inputs: ours, loaded with the released checkpoints'
key names (``decode_head.`` stripped, strict), reproduce their outputs (parity fixture ``dinov2_depth_heads``)."""

import json

import pytest
import torch
from conftest import parity_path
from safetensors.torch import load_file

from benchmarks.depth.heads import build_head


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads(parity_path("dinov2_depth_heads.json").read_text())
    return meta, load_file(str(parity_path("dinov2_depth_heads.safetensors")))


@pytest.mark.parametrize("kind", ["linear1", "linear4", "dpt"])
def test_head_reproduces_dinov2(fixture, kind):
    meta, tensors = fixture
    head = build_head(kind, meta["embed_dim"], min_depth=meta["min_depth"], max_depth=meta["max_depth"],
                      channels=meta["dpt_channels"], n_bins=meta["n_bins"]).eval()  # fmt: skip
    prefix = f"{kind}.decode_head."
    head.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    features = [(tensors[f"input.{i}.patch"], tensors[f"input.{i}.cls"]) for i in meta[f"{kind}_inputs"]]
    with torch.no_grad():
        out = head(features)
    want = tensors[f"{kind}.output"]
    assert out.shape == want.shape
    assert (out - want).abs().max().item() <= 1e-4
