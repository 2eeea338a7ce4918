import pytest
import torch
import torch.nn.functional as F

from sinder.defects.detect import (
    acute_angle,
    find_defects,
    high_norm_mask,
    layer_statistics,
    mean_pairwise_angle,
    patch_token_grids,
)
from sinder.defects.linearize import singular_defect_directions
from sinder.models import defective as dm
from sinder.models.vit import DinoVisionTransformer, build_vit


@pytest.fixture(scope="module")
def model():
    return dm.build_defective_tiny(0)[0]


@pytest.fixture(scope="module")
def grids(model):
    return patch_token_grids(model, dm.sample_images(6, 224, seed=21))


@pytest.fixture(scope="module")
def nu(model):
    # The exact Gaussian limit of the sampled fit: no sampling cost (test_linearize checks both agree).
    return singular_defect_directions(model, method="expectation")


def test_deterministic_preset_of_the_vit_class():
    model, config = dm.build_defective_tiny(0)
    assert isinstance(model, DinoVisionTransformer) and not model.training
    assert config["ffn_layer"] == "swiglufused" and config["depth"] == 8 and config["patch_size"] == 14
    again = dm.defective_tiny_state_dict(0)
    other = dm.defective_tiny_state_dict(1)
    state = model.state_dict()
    assert state.keys() == again.keys() == build_vit(config).state_dict().keys()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["blocks.3.mlp.w3.weight"], other["blocks.3.mlp.w3.weight"])
    from sinder.models.weights import load_backbone

    loaded = load_backbone(dm.PRESET_NAME)
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in state)
    assert loaded.weights_sha256


def test_only_a_few_weights_differ_from_the_random_init():
    state = dm.defective_tiny_state_dict(0)
    base = build_vit(dm.CONFIG, seed=0).state_dict()
    # The embeddings lose their components along the circuit's 3 directions (of 96): small dense changes.
    for key in ("patch_embed.proj.weight", "pos_embed"):
        assert 0 < float((state[key] - base[key]).norm() / base[key].norm()) < 0.3
    # Blocks 0 and 1 write nothing into the circuit's u, e, f but the circuit: their output layers lose those
    # three components, a change of rank 3 at most outside the circuit's own columns.
    silenced = [f"blocks.{i}.{name}" for i in (0, 1) for name in ("attn.proj", "mlp.w3")]
    for name in silenced:
        change = state[f"{name}.weight"] - base[f"{name}.weight"]
        assert torch.linalg.matrix_rank(change[:, 2:]) <= 3, name
    dense = {f"{name}.{p}" for name in silenced for p in ("weight", "bias")}
    rest = [k for k in state if k not in {"patch_embed.proj.weight", "pos_embed", "patch_embed.proj.bias", *dense}]
    changed = sum(int((state[k] != base[k]).sum()) for k in rest)
    assert 0 < changed / sum(state[k].numel() for k in rest) < 0.02
    # Blocks 3..7 differ from the random init only in the four circuit rows/columns of their MLP.
    for i in range(3, 8):
        for key in base:
            if key.startswith(f"blocks.{i}.") and "mlp" not in key:
                assert torch.equal(state[key], base[key]), key


def test_a_few_input_dependent_high_norm_tokens_in_later_blocks(grids):
    positions = set()
    for layer in range(4, 8):
        norms = grids[layer].norm(dim=-1)  # (images, H, W)
        median = norms.flatten(1).median(dim=1).values
        big = norms >= 5 * median[:, None, None]
        per_image = big.flatten(1).sum(dim=1)
        assert (per_image >= 1).all(), (layer, per_image)
        assert (per_image <= 0.06 * 256).all(), (layer, per_image)  # a few, not a region
        if layer == 7:
            positions = {tuple(torch.nonzero(b).flatten().tolist()) for b in big}
    assert len(positions) == 6  # every image has its own defect positions
    early = grids[0].norm(dim=-1)
    assert float(early.max() / early.median()) < 3  # no defects before the circuit fires


def test_defect_directions_agree_within_and_across_images_and_with_nu(grids, nu):
    u = dm.defect_direction(0)
    for layer in range(5, 8):
        maps = list(grids[layer])
        masks = [high_norm_mask(m) for m in maps]
        stats, direction = layer_statistics(maps, masks, nu[layer])
        assert stats.images_with_defects == 6
        assert stats.angle_within_defects < 15 and stats.angle_between_images < 10
        assert stats.angle_within_all > 60
        assert stats.mean_norm_defective > 5 * stats.mean_norm_normal
        assert stats.angle_to_nu < 20, (layer, stats.angle_to_nu)
        assert acute_angle(nu[layer], u) < 20
    # Eq. 5 with nu finds the same tokens as the norm.
    last = list(grids[7])
    for tokens in last:
        eq5 = find_defects(tokens, nu[7])
        hn = high_norm_mask(tokens)
        assert eq5.sum() >= 1 and (eq5 & ~hn).sum() == 0


def test_features_still_separate_image_classes(model):
    # A nearest-centroid probe on mean-pooled final features tells apart two tints of the same texture family.
    gen = torch.Generator().manual_seed(5)
    images = dm.sample_images(24, 112, seed=6)
    labels = torch.arange(24) % 2
    tint = torch.tensor([[0.8, 0.0, -0.8], [-0.8, 0.0, 0.8]])[labels][:, :, None, None]
    images = images + tint + 0.1 * torch.randn(images.shape, generator=gen)
    with torch.no_grad():
        feats = F.normalize(model.forward_features(images)["x_norm_patchtokens"].mean(dim=1), dim=-1)
    train, test = torch.arange(12), torch.arange(12, 24)
    centroids = torch.stack([feats[train][labels[train] == c].mean(0) for c in (0, 1)])
    pred = (feats[test] @ centroids.T).argmax(dim=1)
    assert float((pred == labels[test]).float().mean()) >= 0.9
    assert mean_pairwise_angle(feats) > 1  # features are not collapsed


class Backbone(torch.nn.Module):
    """Runs all blocks of the wrapped ViT and returns its unnormalized patch tokens per block."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        rows, cols = x.shape[-2] // 14, x.shape[-1] // 14
        outs = self.vit.get_intermediate_layers(x, n=list(range(8)), norm=False)
        return [o.reshape(o.shape[0], rows, cols, -1) for o in outs]


def test_fine_tuning_singular_values_removes_the_defects(model, nu):
    # The repair's premise on this model: with U, V frozen and only singular values trained (SGD, lr 0.005,
    # momentum 0.9, as the paper), pulling Eq. 5 defects towards their neighbours removes them.
    wrapper = Backbone(model)
    names = [n for n, p in wrapper.named_parameters() if ".blocks." in n and p.ndim == 2]
    factors = {n: torch.linalg.svd(p.detach(), full_matrices=False) for n, p in wrapper.named_parameters() if n in names}
    eps = {n: torch.zeros_like(f.S, requires_grad=True) for n, f in factors.items()}
    opt = torch.optim.SGD(eps.values(), lr=0.005, momentum=0.9)

    def weights():
        return {n: f.U @ torch.diag(f.S + eps[n]) @ f.Vh for n, f in factors.items()}

    def run(x):
        return torch.func.functional_call(wrapper, weights(), (x,), strict=False)

    held_out = dm.sample_images(4, 224, seed=99)

    def defects():
        with torch.no_grad():
            g = run(held_out)
        norms = g[-1].norm(dim=-1).flatten(1)
        count = sum(int(find_defects(g[i][j], nu[i]).sum()) for i in range(1, 8) for j in range(4))
        return count, float((norms.max(1).values / norms.median(1).values).min())

    before = defects()
    for x in dm.sample_images(20, 224, seed=11).split(1):
        g = run(x)
        layer = next((i for i in range(8) if find_defects(g[i][0].detach(), nu[i]).sum() >= 3), None)
        if layer is None:
            continue
        tokens = g[layer][0]
        mask = find_defects(tokens.detach(), nu[layer])
        with torch.no_grad():
            target = F.avg_pool2d(F.pad(tokens.permute(2, 0, 1)[None], (1, 1, 1, 1), mode="replicate"), 3, 1)
            target = target[0].permute(1, 2, 0)
            alpha = tokens.norm(dim=-1).mean()
        loss = (tokens[mask] - target[mask]).norm(dim=-1).mean() / alpha
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = defects()
    assert before[1] > 10 and after[1] < 3, (before, after)
    assert after[0] < 0.3 * before[0], (before, after)


def test_sample_images_are_deterministic_and_checked():
    assert torch.equal(dm.sample_images(2, 28, seed=3), dm.sample_images(2, 28, seed=3))
    assert dm.sample_images(2, 28, seed=3).shape == (2, 3, 28, 28)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        dm.sample_images(1, 30)
