"""`sinder-bench run --suite table4 --head-weights DIR` (here its multiscale ADE20k task): DINOv2's released segmentation heads, inference only.

The tests write heads in the release's format (``state_dict`` with ``decode_head.*`` keys, official file names)
that predict one class c everywhere (zero conv weights, bias one-hot on c): mIoU and aAcc then follow from the
val labels alone (IoU(c) = share of c, 0 for the other classes present), recomputed here with our loaders."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")

from benchmarks.cli import main  # noqa: E402
from benchmarks.core import backbones as B  # noqa: E402
from benchmarks.core.registry import get_task  # noqa: E402
from benchmarks.data.ade20k import ADE20k  # noqa: E402
from sinder.models.weights import file_sha256  # noqa: E402

ARCH = "dinov2_tiny_defective"
# One task keeps the test short: the multiscale one covers loading, single-scale and TTA evaluation (its smoke
# profile scores the first 4 val images).
TASKS = {"seg_ade20k_multiscale": (ADE20k, 150, 4)}


def shares(loader, root, n_classes, first_n):
    val = loader(root, "val")
    n = len(val) if not first_n else min(first_n, len(val))
    labels = np.concatenate([val.load(i)["label"].ravel() for i in range(n)])
    labels = labels[(labels >= 0) & (labels < n_classes)]
    return np.bincount(labels, minlength=n_classes) / labels.size


@pytest.mark.slow
def test_released_segmentation_heads_are_evaluated_and_recorded(tmp_path):
    from benchmarks.data.synth import write_synthetic

    cache, heads = tmp_path / "cache", tmp_path / "heads"
    heads.mkdir()
    for name in ("ade20k",):
        write_synthetic(name, cache / "synth" / f"{name}-seed0", seed=0)  # the run finds and uses these
    embed = int(B.load(B.parse_backbone_spec(ARCH), device=torch.device("cpu")).embed_dim)
    expected = {}
    for task_name, (loader, n_classes, first_n) in TASKS.items():
        task = get_task(task_name)
        share = shares(loader, cache / "synth" / f"{task.dataset}-seed0", n_classes, first_n)
        c = int(share.argmax())
        expected[task_name] = (100 * share[c] / np.count_nonzero(share), 100 * share[c])
        channels = embed * (1 if task.setting == "linear" else 4)
        bias = torch.zeros(n_classes)
        bias[c] = 10.0
        state = {"conv_seg.weight": torch.zeros(n_classes, channels, 1, 1), "conv_seg.bias": bias,
                 "bn.weight": torch.ones(channels), "bn.bias": torch.zeros(channels),
                 "bn.running_mean": torch.zeros(channels), "bn.running_var": torch.ones(channels),
                 "bn.num_batches_tracked": torch.tensor(0)}  # fmt: skip
        torch.save({"meta": {}, "state_dict": {f"decode_head.{k}": v for k, v in state.items()}},
                   heads / task.released_head_file(ARCH))  # fmt: skip
    assert (heads / "dinov2_tiny_defective_ade20k_ms_head.pth").is_file()
    assert get_task("seg_voc_linear").released_head_file("dinov2_vitg14") == "dinov2_vitg14_voc2012_linear_head.pth"
    code = main(["run", "--suite", "seg_ade20k_multiscale", "--profile", "smoke", "--backbone", ARCH, "--out", str(tmp_path / "runs"),
                 "--cache-dir", str(cache), "--no-progress", "--head-weights", str(heads)])  # fmt: skip
    assert code == 0
    for task_name, (miou, aacc) in expected.items():
        (path,) = (tmp_path / "runs" / task_name).glob("*.json")
        record = json.loads(path.read_text())
        head_file = heads / get_task(task_name).released_head_file(ARCH)
        assert record["hparams"]["head"] == {"source": "released head", "file": head_file.name,
                                             "sha256": file_sha256(head_file)}  # fmt: skip
        assert record["metrics"]["miou"] == pytest.approx(miou, abs=0.02)
        assert record["metrics"]["aacc"] == pytest.approx(aacc, abs=0.02)
