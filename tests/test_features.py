import dataclasses

import pytest
import torch
from torch.utils.data import TensorDataset

from benchmarks.core.features import FeatureSpec, cache_path, extract_features


class Affine(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.proj = torch.nn.Linear(12, 5)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(seed))


def _fn(calls):
    def feature_fn(model, images):
        calls.append(images.shape[0])
        return {"features": model.proj(images.flatten(1)), "norm": images.flatten(1).norm(dim=1)}

    return feature_fn


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(23, 3, 2, 2, generator=gen)
    labels = torch.arange(23) % 4
    return TensorDataset(images, labels), images, labels


def _spec(sha="a" * 64, **kw):
    base = dict(weights_sha256=sha, dataset="toy:23", transform="id", resolution="2", layers="proj", dtype="float32")
    return FeatureSpec(**{**base, **kw})


def test_extraction_matches_direct_computation_in_order(data):
    dataset, images, labels = data
    model, calls = Affine(0), []
    out = extract_features(model, dataset, _fn(calls), batch_size=5, progress=False)
    assert calls == [5, 5, 5, 5, 3]
    with torch.no_grad():
        expected = model.proj(images.flatten(1))
    assert torch.allclose(out["features"], expected, atol=1e-6)
    assert torch.allclose(out["norm"], images.flatten(1).norm(dim=1))
    assert torch.equal(out["labels"], labels)
    assert out["features"].dtype == torch.float32


def test_cache_hit_skips_the_model_and_a_new_checkpoint_misses(data, tmp_path):
    dataset, _, _ = data
    calls = []
    first = extract_features(Affine(0), dataset, _fn(calls), spec=_spec(), cache_dir=tmp_path, batch_size=8,
                             progress=False)  # fmt: skip
    assert cache_path(tmp_path, _spec()).is_file()
    n = len(calls)
    # Same key: read back from disk, no forward pass, even with a model that would give other numbers.
    again = extract_features(Affine(1), dataset, _fn(calls), spec=_spec(), cache_dir=tmp_path, progress=False)
    assert len(calls) == n
    assert all(torch.equal(first[k], again[k]) for k in first)
    # A different weights sha256 (or any other key field) never reuses the cached features.
    other = extract_features(Affine(1), dataset, _fn(calls), spec=_spec("b" * 64), cache_dir=tmp_path,
                             progress=False)  # fmt: skip
    assert len(calls) > n
    assert not torch.allclose(other["features"], first["features"])


@pytest.mark.parametrize("field", ["weights_sha256", "dataset", "transform", "resolution", "layers", "dtype"])
def test_every_key_field_changes_the_cache_file(field):
    spec = _spec()
    changed = dataclasses.replace(spec, **{field: getattr(spec, field) + "x"})
    assert changed.key() != spec.key()


def test_truncated_cache_file_is_recomputed(data, tmp_path):
    dataset, _, _ = data
    calls = []
    extract_features(Affine(0), dataset, _fn(calls), spec=_spec(), cache_dir=tmp_path, progress=False)
    path = cache_path(tmp_path, _spec())
    path.write_bytes(path.read_bytes()[:40])
    n = len(calls)
    out = extract_features(Affine(0), dataset, _fn(calls), spec=_spec(), cache_dir=tmp_path, progress=False)
    assert len(calls) > n and out["features"].shape == (23, 5)


def test_empty_dataset_is_an_error():
    empty = TensorDataset(torch.zeros(0, 3), torch.zeros(0))
    with pytest.raises(ValueError, match="empty dataset"):
        extract_features(Affine(0), empty, _fn([]), progress=False)
