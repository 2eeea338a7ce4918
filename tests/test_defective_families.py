"""The constructed stand-ins of the other families (issue 21 item 5) and the method on them (item 3):
``clip_tiny_defective`` (class token, pre-norm, no LayerScale, QuickGELU) and ``siglip_tiny_defective`` (no class
token, tanh-GELU, attention pool) carry dinov2_tiny_defective's planted circuit; Eq. 5, the census, the clamp and
test-time registers find and treat its defects through the model adapter."""

from __future__ import annotations

import pytest
import torch

from sinder.defects.census import census, compare
from sinder.defects.detect import acute_angle, find_defects, high_norm_mask, patch_token_grids
from sinder.defects.linearize import block_weights, singular_defect_directions
from sinder.models import defective as dm
from sinder.models.adapter import num_prefix_tokens
from sinder.models.backbone import describe
from sinder.models.weights import load_backbone
from sinder.remedies.clamp import clamp_singular_values
from sinder.remedies.ttr import apply_test_time_registers, fit_register_neurons

FAMILY = {dm.CLIP_NAME: ("clip", 1, "cls", "quick_gelu"), dm.SIGLIP_NAME: ("siglip", 0, "attention", "gelu_pytorch_tanh")}
NAMES = list(FAMILY)


@pytest.fixture(scope="module", params=NAMES)
def stand_in(request):
    name = request.param
    model = load_backbone(name)
    nu = singular_defect_directions(model, method="expectation")
    grids = patch_token_grids(model, dm.sample_images(6, 224, seed=21))
    return name, model, nu, grids


def test_stand_ins_are_registered_deterministic_and_of_their_family(stand_in):
    name, model, _, _ = stand_in
    family, prefix, pooling, act = FAMILY[name]
    d = describe(model)
    assert (d.family, d.num_prefix_tokens, d.pooling, d.patch_size) == (family, prefix, pooling, 14)
    assert num_prefix_tokens(model) == prefix
    assert not any(".ls1." in k or ".ls2." in k for k in model.state_dict())  # no LayerScale
    assert {bw.mlp_kind for bw in block_weights(model)} == {act}
    assert (model.cls_token is not None) == (family == "clip")
    assert hasattr(model, "norm_pre") == (family == "clip") and hasattr(model, "attn_pool") == (family == "siglip")
    again = dm.defective_tiny_state_dict(0, name=name)
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    other = dm.defective_tiny_state_dict(1, name=name)
    assert not torch.equal(other["blocks.3.mlp.fc2.weight"], again["blocks.3.mlp.fc2.weight"])


def test_unknown_stand_in_is_named():
    with pytest.raises(ValueError, match="unknown constructed stand-in 'vit_tiny_defective'"):
        dm.build_defective_tiny(0, name="vit_tiny_defective")


def test_a_few_defects_per_image_along_the_planted_direction(stand_in):
    name, model, nu, grids = stand_in
    u = dm.defect_direction(0, name=name)
    for layer in range(1, 8):
        assert acute_angle(nu[layer], u) < 15, (layer, acute_angle(nu[layer], u))  # the linearization finds u
    early = grids[0].norm(dim=-1)
    assert float(early.flatten(1).max(1).values.div(early.flatten(1).median(1).values).max()) < 3
    last = grids[-1]
    counts = [int(high_norm_mask(g).sum()) for g in last]
    assert all(1 <= c <= 0.06 * 256 for c in counts), counts  # a few per image, not a region
    for tokens in last:
        hn = high_norm_mask(tokens)
        eq5 = find_defects(tokens, nu[-1])
        assert eq5.sum() >= 1 and (eq5 & ~hn).sum() == 0  # Eq. 5 along nu flags high-norm tokens only
        defects = torch.nn.functional.normalize(tokens[hn], dim=-1)
        assert float((defects @ u).abs().min()) > 0.9  # and they lie along u


def test_clamping_removes_the_defects(stand_in):
    name, model, nu, _ = stand_in
    images = dm.sample_images(4, 224, seed=8)
    state, layers = clamp_singular_values(model, 2.0)
    assert any(info.n_clamped for info in layers)
    assert all(k.endswith((".attn.qkv.weight", ".attn.proj.weight", ".mlp.fc1.weight", ".mlp.fc2.weight"))
               for k in (info.key for info in layers))  # fmt: skip
    clamped = dm.build_defective_tiny(0, name=name)[0]
    clamped.load_state_dict(state)

    def ratio(m):
        norms = patch_token_grids(m, images)[-1].norm(dim=-1).flatten(1)
        return float((norms.max(1).values / norms.median(1).values).max())

    assert ratio(model) > 5 and ratio(clamped) < 3, (ratio(model), ratio(clamped))


def test_census_before_and_after_a_clamp(stand_in):
    name, model, nu, _ = stand_in
    images = list(range(6))
    batch = dm.sample_images(6, 112, seed=30)
    state, _ = clamp_singular_values(model, 2.0)
    clamped = dm.build_defective_tiny(0, name=name)[0]
    clamped.load_state_dict(state)
    before = census(model, images, lambda i: batch[i], nu)
    after = census(clamped, images, lambda i: batch[i], singular_defect_directions(clamped, method="expectation"))
    result = compare(before, after)
    assert before["high_norm_tokens_per_layer"][-1] >= 3
    assert result["high_norm_removed_fraction_last_block"] >= 0.9
    assert result["images_made_worse"] == 0


def test_test_time_registers_move_the_outliers_to_the_extra_token(stand_in):
    name, model, _, _ = stand_in
    fit_images = dm.sample_images(16, 112, seed=40)
    neurons = fit_register_neurons(model, fit_images.split(8), selection="robust_z")  # top 50, as the smoke fit
    assert neurons.neurons and neurons.fit["images_with_outliers"] >= 8
    wrapped = apply_test_time_registers(model, neurons)
    images = dm.sample_images(6, 224, seed=21)
    with torch.no_grad():
        base = model.get_intermediate_layers(images, n=1, norm=False)[0]
        moved = wrapped.get_intermediate_layers(images, n=1, norm=False)[0]
        extra = wrapped.extra_token_output(images)
        features = wrapped.forward_features(images)
    assert moved.shape == base.shape == (6, 256, 96)  # the extra token never reaches the patch tokens
    grid = moved.reshape(6, 16, 16, -1)
    before = sum(int(high_norm_mask(g).sum()) for g in base.reshape(6, 16, 16, -1))
    after = sum(int(high_norm_mask(g).sum()) for g in grid)
    assert before >= 6 and after <= before // 4, (before, after)
    median = float(moved.norm(dim=-1).median())
    assert float(extra.norm(dim=-1).min()) > 3 * median  # the outlier went to the register
    # the pooled feature (class token or attention pool) and the patch tokens keep their shapes
    assert features["x_norm_clstoken"].shape == (6, 96) and features["x_norm_patchtokens"].shape == (6, 256, 96)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_analyze_finds_the_defects_along_nu(tmp_path, name):
    import json

    from benchmarks.cli import main
    from sinder.utils.synthetic_images import write_synthetic_photos

    photos = write_synthetic_photos(tmp_path / "photos", 8, size=128, seed=5)
    out = tmp_path / "analysis"
    assert main(["analyze", "--backbone", name, "--images", str(photos), "--out", str(out), "--method",
                 "expectation", "--no-progress"]) == 0  # fmt: skip
    last = json.loads((out / "analysis.json").read_text())["layers"][-1]
    assert last["high_norm"]["n_defects"] >= 1
    assert last["angle_to_empirical"]["cumulative"] < 20  # nu points along the high-norm tokens
    assert last["token_angles"]["nu"]["defective"] < 20 < last["token_angles"]["nu"]["normal"]


def test_test_time_register_is_one_more_prefix_token_under_rope():
    """DINOv3 rotates the last rows x cols tokens (the patches) with RoPE: the extra token must sit among the prefix
    tokens. With its register neuron's output column zero, the wrapped model is exactly the model with one more,
    zero, trained register."""
    from sinder.models.vit import build_vit

    config = {"family": "dinov3", "embed_dim": 64, "depth": 3, "num_heads": 4, "img_size": 56, "pos_embed": False,
              "rope": True, "ffn_layer": "swiglu_exact", "num_register_tokens": 2, "interpolate_offset": 0.0}  # fmt: skip
    model = build_vit(config, seed=0)
    with torch.no_grad():
        model.register_tokens.normal_(generator=torch.Generator().manual_seed(1))
        model.blocks[1].mlp.w3.weight[:, 5] = 0  # the register neuron's edit changes nothing but the extra token
    twin = build_vit({**config, "num_register_tokens": 3}, seed=0)
    state = dict(model.state_dict())
    state["register_tokens"] = torch.cat([state["register_tokens"], torch.zeros(1, 1, 64)], dim=1)
    twin.load_state_dict(state)
    wrapped = apply_test_time_registers(model, [(1, 5)])
    x = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = wrapped.get_intermediate_layers(x, n=3, norm=False)
        reference = twin.get_intermediate_layers(x, n=3, norm=False)
        plain = model.get_intermediate_layers(x, n=3, norm=False)
    for i, (a, b) in enumerate(zip(ours, reference)):
        assert (a - b).abs().max().item() <= 1e-5, f"block {i}"
    assert (ours[-1] - plain[-1]).abs().max().item() > 1e-3  # the extra token takes part in attention


def test_images_are_normalised_with_the_backbones_own_statistics(tmp_path, stand_in):
    """The repair, the census, analyze and test-time registers feed each backbone its own mean/std: a stand-in was
    built on ImageNet-normalised images; a real CLIP or SigLIP checkpoint gets its family's statistics."""
    import numpy as np
    from PIL import Image

    from sinder.defects.census import resize_views
    from sinder.models.adapter import FAMILY_MEAN_STD
    from sinder.models.backbone import normalization
    from sinder.utils.images import IMAGENET_MEAN, IMAGENET_STD

    name, model, _, _ = stand_in
    assert normalization(model) == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    family = FAMILY[name][0]
    real = build_like(model, family)
    mean, std = FAMILY_MEAN_STD[family]
    assert normalization(real) == {"mean": tuple(mean), "std": tuple(std)}
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "img.png")
    expected = (torch.from_numpy(pixels).permute(2, 0, 1) / 255.0 - torch.tensor(mean)[:, None, None]) / torch.tensor(
        std)[:, None, None]  # fmt: skip
    for view in resize_views(28, 14, **normalization(real)):
        assert torch.allclose(view(tmp_path / "img.png"), expected, atol=1e-6)


def build_like(model, family):
    """A model of the stand-in's architecture that is no stand-in (as a checkpoint of that family loads)."""
    from sinder.models.vit import build_vit

    other = build_vit(model.config, seed=0)
    other.name = f"a {family} checkpoint"
    return other
