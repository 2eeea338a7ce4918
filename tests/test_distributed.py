
"""Two CPU processes under torchrun (gloo) give the same features, KNN scores and linear probe as one."""

import os
import textwrap

import pytest
import torch
from ddp_helpers import torchrun

from benchmarks.core.distributed import shard_range

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from benchmarks.core import distributed as D
    from benchmarks.core.features import FeatureSpec, extract_features
    from benchmarks.classification.knn import knn_classify

    sys.path.insert(0, sys.argv[2])
    from test_distributed import case_data, feature_fn, linear_case, model_for

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    out = Path(sys.argv[1])
    dataset, train, train_labels, test = case_data()
    spec = FeatureSpec("c" * 64, "toy", "id", "2", "proj", "float32")
    feats = extract_features(model_for(), dataset, feature_fn, batch_size=4, spec=spec, cache_dir=out / "cache",
                             progress=False)
    scores = knn_classify(train, train_labels, test, [3, 10], 0.07, 6, chunk_size=5)
    start, stop = D.shard_range(len(train))
    sharded = knn_classify(train[start:stop], train_labels[start:stop], test, [3, 10], 0.07, 6, sharded=True)
    heads = linear_case(batch_per_rank=8)
    if D.rank() == 0:
        save_file({"features": feats["features"], "labels": feats["labels"], "knn3": scores[3],
                   "knn10": scores[10], "sharded10": sharded[10], "heads": heads}, str(out / "dist.safetensors"))
    dist.barrier()
    dist.destroy_process_group()
    """
)


def model_for():
    torch.manual_seed(0)
    return torch.nn.Linear(12, 5)


def feature_fn(model, images):
    return model(images.flatten(1))


def case_data():
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(23, 3, 2, 2, generator=gen), torch.arange(23) % 4)  # 23: uneven shards
    train = torch.nn.functional.normalize(torch.randn(101, 8, generator=gen), dim=1)
    test = torch.nn.functional.normalize(torch.randn(17, 8, generator=gen), dim=1)
    return dataset, train, torch.randint(0, 6, (101,), generator=gen), test


class _Identity(torch.nn.Module):
    embed_dim = 6
    patch_size = 1  # the Backbone protocol's field: the probe pads crops to a multiple of it

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        return tuple((x[:, None, :], x * (i + 1)) for i in range(n))


class _Augmented(torch.utils.data.TensorDataset):
    """Random noise added per draw from torch's global generator, as the image augmentations draw theirs."""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x + 0.5 * torch.randn(x.shape), y


def linear_case(batch_per_rank):
    """Accuracies of 8 heads after 6 steps on noisy, randomly augmented data (so heads differ), as a tensor."""
    from torch.utils.data import TensorDataset

    from benchmarks.classification.linear import head_configs, train_linear_probe

    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 4, (96,), generator=gen)
    x = torch.randn(4, 6, generator=gen)[labels] + 1.5 * torch.randn(96, 6, generator=gen)
    train, val = _Augmented(x[:64], labels[:64]), TensorDataset(x[64:], labels[64:])
    out = train_linear_probe(_Identity(), train, val, 4, iterations=6, batch_size=batch_per_rank, seed=1,
                             configs=head_configs([1, 4], [False, True], [0.5, 5.0]))  # fmt: skip
    return torch.tensor([[v["top1"], v["top5"]] for v in out["heads"].values()], dtype=torch.float64)


def test_shard_range_covers_in_order():
    for n in (0, 1, 5, 23, 100):
        for world in (1, 2, 3, 8):
            parts = [shard_range(n, r, world) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert all(b - a <= -(-n // world) for a, b in parts)


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    from safetensors.torch import load_file

    from benchmarks.classification.knn import knn_classify
    from benchmarks.core.features import extract_features

    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    torchrun(str(script), str(tmp_path), os.path.dirname(__file__), timeout=240)
    dist_out = load_file(str(tmp_path / "dist.safetensors"))

    dataset, train, train_labels, test = case_data()
    single = extract_features(model_for(), dataset, feature_fn, batch_size=4, progress=False)
    assert torch.allclose(dist_out["features"], single["features"], atol=1e-6)
    assert torch.equal(dist_out["labels"], single["labels"])
    scores = knn_classify(train, train_labels, test, [3, 10], 0.07, 6)
    assert torch.allclose(dist_out["knn3"], scores[3], atol=1e-6)
    assert torch.allclose(dist_out["knn10"], scores[10], atol=1e-6)
    assert torch.allclose(dist_out["sharded10"], scores[10], atol=1e-6)
    # Two ranks x batch 8 train exactly like one process x batch 16 (same global batches, averaged gradients).
    heads = linear_case(batch_per_rank=16)
    assert torch.allclose(dist_out["heads"], heads)
    assert heads[:, 0].unique().numel() > 1  # the heads really differ, so the comparison is informative
    # Rank 0 wrote the gathered features to the cache once.
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
