"""The ImageNet linear probe task under torchrun: 2 gloo processes record the metrics of 1 process (smoke)."""

from __future__ import annotations

import pytest
from ddp_helpers import one_and_two_processes


@pytest.mark.slow
def test_two_processes_record_the_metrics_of_one(tmp_path):
    one, two = one_and_two_processes(tmp_path, "imagenet_linear")
    one, two = one["imagenet_linear"], two["imagenet_linear"]
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    # every one of the heads, not only the best
    heads_one, heads_two = one["details"]["heads"], two["details"]["heads"]
    assert heads_one.keys() == heads_two.keys() and len(heads_one) == 52
    for name, acc in heads_one.items():
        assert heads_two[name] == pytest.approx(acc, abs=1e-6), name
    assert len({round(v["top1"], 4) for v in heads_one.values()}) > 1  # heads differ: the comparison says something
    # the effective (global) batch and the scaled learning rate are the same; the split is recorded
    for key in ("global_batch", "lr_scaled", "head"):
        assert two["hparams"][key] == one["hparams"][key], key
    assert (one["hparams"]["world_size"], one["hparams"]["batch_per_rank"]) == (1, 16)
    assert (two["hparams"]["world_size"], two["hparams"]["batch_per_rank"]) == (2, 8)
