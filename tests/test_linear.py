import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from benchmarks.classification import transforms as T
from benchmarks.classification.linear import (
    LEARNING_RATES,
    HeadConfig,
    LinearHeads,
    head_configs,
    linear_input,
    train_linear_probe,
)
from sinder.models.adapter import FAMILY_MEAN_STD

MEAN, STD = FAMILY_MEAN_STD["dinov2"]


class FeatureBackbone(nn.Module):
    """A fake backbone whose 'image' is already a feature vector: the class token of every block is the input
    (scaled per block), the patch tokens are the input repeated. Counts calls of get_intermediate_layers."""

    def __init__(self, dim):
        super().__init__()
        self.embed_dim = dim
        self.patch_size = 1  # a Backbone member: its description (the pooling: class token) reads it
        self.calls = 0
        self.batch_sizes = []

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        assert return_class_token and norm and not reshape
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        blocks = range(n) if isinstance(n, int) else n
        return tuple((x[:, None, :].repeat(1, 3, 1) * 0.5, x * (i + 1)) for i, _ in enumerate(blocks))


class SeparableSet(Dataset):
    def __init__(self, n, dim, classes, seed):
        gen = torch.Generator().manual_seed(seed)
        self.centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 3
        self.labels = torch.randint(0, classes, (n,), generator=gen)
        self.x = self.centres[self.labels] + 0.3 * torch.randn(n, dim, generator=gen)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


def test_head_grid_is_the_protocols_52_heads():
    configs = head_configs()
    assert len(configs) == 52 == 2 * 2 * len(LEARNING_RATES)
    assert len({c.name for c in configs}) == 52
    assert LEARNING_RATES[0] == 1e-5 and LEARNING_RATES[-1] == 0.1 and len(LEARNING_RATES) == 13


def test_linear_input_layout():
    tokens = [(torch.full((2, 5, 3), float(i)), torch.full((2, 3), 10.0 + i)) for i in range(4)]
    x = linear_input(tokens, 4, True)
    assert x.shape == (2, 15)
    assert x[0, :12].tolist() == [10.0] * 3 + [11.0] * 3 + [12.0] * 3 + [13.0] * 3
    assert x[0, 12:].tolist() == [3.0] * 3  # mean of the LAST block's patch tokens
    assert linear_input(tokens, 1, False)[0].tolist() == [13.0] * 3


def test_heads_init():
    heads = LinearHeads(head_configs(), embed_dim=64, num_classes=100)
    w = torch.cat([h.weight.flatten() for h in heads.heads])
    assert abs(w.std().item() - 0.01) < 1e-3
    assert all((h.bias == 0).all() for h in heads.heads)
    dims = {(c.n_last_blocks, c.avgpool): h.in_features for c, h in zip(heads.configs, heads.heads)}
    assert dims == {(1, False): 64, (1, True): 128, (4, False): 256, (4, True): 320}


def test_best_head_learns_separable_features_with_one_forward_per_batch():
    dim, classes = 8, 5
    train, val = SeparableSet(200, dim, classes, seed=1), SeparableSet(100, dim, classes, seed=2)
    backbone = FeatureBackbone(dim)
    iterations, batch = 40, 32
    out = train_linear_probe(backbone, train, val, classes, iterations=iterations, batch_size=batch, seed=0)
    # 52 heads, yet exactly one backbone call per training batch and per evaluation batch.
    eval_batches = -(-len(val) // batch)
    assert backbone.calls == iterations + eval_batches
    assert backbone.batch_sizes[:iterations] == [batch] * iterations
    assert len(out["heads"]) == 52
    assert out["metrics"]["top1"] >= 95.0
    best = out["hparams"]
    assert out["heads"][best["head"]]["top1"] == out["metrics"]["top1"] == max(h["top1"] for h in out["heads"].values())
    assert best["lr_scaled"] == pytest.approx(best["lr"] * batch / 256)
    # The tiniest learning rate cannot separate the classes in 40 steps: the choice of head matters.
    slowest = HeadConfig(1, False, 1e-5).name
    assert out["heads"][slowest]["top1"] < out["metrics"]["top1"]


def test_training_is_deterministic_given_the_seed():
    train, val = SeparableSet(64, 4, 3, seed=1), SeparableSet(30, 4, 3, seed=2)
    runs = [
        train_linear_probe(FeatureBackbone(4), train, val, 3, iterations=5, batch_size=16, seed=3,
                           configs=head_configs([1], [False], [0.01, 0.1]))  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0]["heads"] == runs[1]["heads"]


def test_probe_rejects_bad_schedule():
    with pytest.raises(ValueError, match="iterations"):
        train_linear_probe(FeatureBackbone(4), SeparableSet(8, 4, 2, 0), SeparableSet(8, 4, 2, 1), 2,
                           iterations=0, batch_size=4)  # fmt: skip


def test_eval_transform_follows_resize_then_center_crop():
    img = Image.new("RGB", (300, 200), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 150, 200))  # left half blue
    resized = T.Resize(64)(img)
    assert resized.size == (96, 64)  # short side 64, long side int(64 * 300 / 200)
    x = T.eval_transform(64, 56, mean=MEAN, std=STD)(img)
    assert x.shape == (3, 56, 56)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    # Left column blue, right column red, after normalisation.
    assert torch.allclose(x[:, 28, 0], (torch.tensor([0.0, 0.0, 1.0]) - mean) / std, atol=0.05)
    assert torch.allclose(x[:, 28, -1], (torch.tensor([1.0, 0.0, 0.0]) - mean) / std, atol=0.05)


def test_train_transform_shapes_and_randomness():
    img = Image.effect_noise((120, 90), 64).convert("RGB")
    tf = T.train_transform(56, mean=MEAN, std=STD)
    torch.manual_seed(0)
    a = tf(img)
    b = tf(img)
    torch.manual_seed(0)
    assert torch.equal(a, tf(img))
    assert a.shape == (3, 56, 56) and not torch.equal(a, b)
    left, top, w, h = T.RandomResizedCrop(56)._box(120, 90)
    assert 0 <= left and left + w <= 120 and 0 <= top and top + h <= 90
    assert "random_resized_crop(56" in tf.describe() and "hflip" in tf.describe()
