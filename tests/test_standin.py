"""The trained stand-in (sinder.models.standin): shipped weights match their script, artifacts sit on
low-information patches only and take those patches' local content, the register release has none, and the
repair removes them without making a held-out image worse."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sinder.defects.detect import high_norm_mask
from sinder.models.standin import build, train
from sinder.models.standin.scaffold import CONFIG, TRIGGER_BLOCK
from sinder.models.weights import load_backbone

RES = 112  # the stand-in's training size: an 8 x 8 token grid
PATCH = CONFIG["patch_size"]


def _scene(gen: torch.Generator, flat: torch.Tensor) -> torch.Tensor:
    """One ImageNet-normalised image: strong random texture everywhere except the patches where ``flat`` (8 x 8)
    is True, which hold a flat colour with faint noise (std 0.03, far under the texture's 1.0)."""
    texture = torch.randn(3, RES, RES, generator=gen)
    colour = torch.randn(3, 1, 1, generator=gen) * 0.5
    quiet = colour + 0.03 * torch.randn(3, RES, RES, generator=gen)
    mask = flat.repeat_interleave(PATCH, 0).repeat_interleave(PATCH, 1)
    return torch.where(mask, quiet, texture)


def _flat_masks(count: int, gen: torch.Generator) -> torch.Tensor:
    """Per image, one or two isolated flat patches inside the grid (a few low-information patches per image)."""
    masks = torch.zeros(count, RES // PATCH, RES // PATCH, dtype=torch.bool)
    for i in range(count):
        for _ in range(1 + i % 2):
            r, c = torch.randint(1, RES // PATCH - 1, (2,), generator=gen).tolist()
            masks[i, r, c] = True
    return masks


@pytest.fixture(scope="module")
def scenes():
    gen = torch.Generator().manual_seed(3)
    masks = _flat_masks(12, gen)
    return torch.stack([_scene(gen, m) for m in masks]), masks


def _last_block_tokens(model, images):
    with torch.no_grad():
        out = model.forward_features(images)
    side = RES // PATCH
    return out["x_prenorm"][:, -side * side :].reshape(len(images), side, side, -1), out["x_norm_patchtokens"]


@pytest.mark.parametrize("which", ["base", "reg"])
def test_shipped_weights_record_the_current_training_script(which):
    meta = build.shipped_metadata(which)
    # Changing train.py or scaffold.py without retraining (see train.py's docstring for the command) fails here.
    assert meta["script_sha256"] == train.script_sha256()
    args = json.loads(meta["arguments"])
    assert args["registers"] == (4 if which == "reg" else 0) and args["steps"] > 0
    assert build.WEIGHTS[which].stat().st_size < 1.2e6


def test_artifacts_sit_on_the_low_information_patches_and_nowhere_else(scenes):
    images, flat = scenes
    model = load_backbone("dinov2_tiny_standin")
    tokens, _ = _last_block_tokens(model, images)
    found = torch.stack([high_norm_mask(t) for t in tokens])
    assert found.sum() >= 0.9 * flat.sum(), (int(found.sum()), int(flat.sum()))
    assert not (found & ~flat).any(), "an artifact on a textured patch"
    # the artifact is along the planted direction u, many times the median norm
    u = build.artifact_direction()
    norms = tokens.norm(dim=-1)
    assert norms[found].min() > 5 * norms.median()
    cos = (tokens[found] @ u).abs() / norms[found]
    assert cos.min() > 0.9
    # a uniformly flat image (nothing more informative in it) and a uniformly textured one: no artifact
    gen = torch.Generator().manual_seed(4)
    plain = torch.stack([_scene(gen, torch.ones(8, 8, dtype=torch.bool)), _scene(gen, torch.zeros(8, 8, dtype=torch.bool))])
    tokens, _ = _last_block_tokens(model, plain)
    assert not torch.stack([high_norm_mask(t) for t in tokens]).any()


def _readout_errors(model, images, flat):
    """Per-patch squared error of a ridge readout of the patch's mean colour from the final normed tokens, fit
    on every patch of every image (a dense linear head's view): (error on flat patches, on the others)."""
    _, normed = _last_block_tokens(model, images)
    target = torch.nn.functional.avg_pool2d(images, PATCH).flatten(2).transpose(1, 2).reshape(-1, 3)
    x = torch.cat([normed.reshape(-1, normed.shape[-1]), torch.ones(len(target), 1)], dim=1)
    w = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1]), x.T @ target)
    err = ((x @ w - target) ** 2).sum(dim=1).reshape(flat.shape)
    return float(err[flat].mean()), float(err[~flat].mean())


def test_artifacts_lose_their_local_content_and_the_register_release_has_none(scenes):
    images, flat = scenes
    base = load_backbone("dinov2_tiny_standin")
    on_artifacts, elsewhere = _readout_errors(base, images, flat)
    assert on_artifacts > 5 * elsewhere, (on_artifacts, elsewhere)
    # the same training with 4 registers and no trigger: no high-norm token, and flat patches read out fine
    reg = load_backbone("dinov2_tiny_standin_reg")
    tokens, _ = _last_block_tokens(reg, images)
    assert not torch.stack([high_norm_mask(t) for t in tokens]).any()
    flat_err, _ = _readout_errors(reg, images, flat)
    assert flat_err < on_artifacts / 5, (flat_err, on_artifacts)


def test_the_energy_the_trigger_reads_separates_flat_from_textured_patches():
    """At the trigger block every flat patch's energy is far below every textured one's (8 random filters: a
    chi-square estimate of the pixel variance), and the image mean f sits between them."""
    model = load_backbone("dinov2_tiny_standin")
    gen = torch.Generator().manual_seed(5)
    masks = _flat_masks(6, gen)
    images = torch.stack([_scene(gen, m) for m in masks])
    from sinder.models.standin.circuit import trigger_inputs

    energy, mean = trigger_inputs(model, images)
    patches = energy[:, 1:].reshape(masks.shape)
    assert patches[masks].max() < 0.05 * patches[~masks].min(), (float(patches[masks].max()), float(patches[~masks].min()))
    assert TRIGGER_BLOCK in range(1, len(model.blocks) - 1)  # a middle block


@pytest.mark.slow
def test_the_smoke_repair_clears_held_out_photographs_and_makes_none_worse():
    """48 synthetic photographs the repair never saw (another seed than its 32): the last block's high-norm tokens
    mostly go, and no image gains one. Before the null-space fillers the repair grew exactly-zero singular values
    into the circuit directions and made them more (0.03 -> 3.4 per image on the ImageNet twin)."""
    from sinder.repair.smoke import repair_for_smoke
    from sinder.utils.images import resize_center_crop, to_normalized_tensor
    from sinder.utils.synthetic_images import synthetic_photos

    photos = synthetic_photos(48, size=RES + 16, seed=999)
    images = torch.stack([to_normalized_tensor(resize_center_crop(p, RES)) for p in photos])
    base = load_backbone("dinov2_tiny_standin")
    repaired = repair_for_smoke(copy.deepcopy(base))
    before, _ = _last_block_tokens(base, images)
    after, _ = _last_block_tokens(repaired, images)
    counts_before = [int(high_norm_mask(t).sum()) for t in before]
    counts_after = [int(high_norm_mask(t).sum()) for t in after]
    assert sum(counts_before) >= 20, counts_before  # the photographs do carry artifacts
    assert sum(counts_after) <= sum(counts_before) / 4, (sum(counts_before), sum(counts_after))
    assert all(a <= b for a, b in zip(counts_after, counts_before)), (counts_before, counts_after)


@pytest.mark.slow
def test_the_defect_direction_of_every_block_is_the_artifact_direction():
    """Section 3 on the stand-in: nu_l, the leading left singular vector of the linearized blocks 0..l, is the
    planted artifact direction u in every block, at the smoke repair's 20k least-squares samples and at the
    official 100k. Before the scaffold read its signals at the linearization's scale (DETECTOR_GAIN, MEAN_GAIN
    4), nu_1 was 0.74 e - 0.67 u and nu_2..5 0.67-0.81 u + 0.5-0.7 f."""
    from sinder.defects.linearize import block_weights, compute_directions
    from sinder.repair.config import SMOKE_CONFIG

    model = load_backbone("dinov2_tiny_standin")
    u = build.artifact_direction()
    for n_samples in (SMOKE_CONFIG["n_samples"], 100_000):
        nus = compute_directions(block_weights(model), n_samples=n_samples, kinds=("cumulative",)).nu
        cosines = [abs(float(nu @ u)) for nu in nus]
        assert min(cosines) > 0.97, (n_samples, [round(c, 3) for c in cosines])


def _twin_images(name: str, root, count: int = 36) -> torch.Tensor:
    from PIL import Image

    from benchmarks.data.synth import write_synthetic
    from sinder.utils.images import resize_center_crop, to_normalized_tensor

    twin = write_synthetic(name, root / name, seed=0).root
    files = sorted(p for p in twin.rglob("*.jpg"))[:count]
    return torch.stack([to_normalized_tensor(resize_center_crop(Image.open(f).convert("RGB"), RES)) for f in files])


def test_the_smoke_repair_gives_the_dense_twins_their_untriggered_features_back(tmp_path):
    """The smoke repair (32 synthetic photographs, 80 steps) on images it never saw, the ADE20k and NYUd twins
    the dense probes read: their last-block artifacts go, and the final normed tokens come back to what the same
    weights give with no trigger planted (the oracle): on the artifact patches from about 13 away to under 1,
    elsewhere within a few percent of a token's norm (~9.8)."""
    from sinder.repair.smoke import repair_for_smoke

    base = load_backbone("dinov2_tiny_standin")
    oracle = build.trained_model("base")  # the same weights, trigger never planted
    repaired = repair_for_smoke(copy.deepcopy(base))
    for name in ("ade20k", "nyud"):
        images = _twin_images(name, tmp_path)
        before, base_normed = _last_block_tokens(base, images)
        after, repaired_normed = _last_block_tokens(repaired, images)
        _, oracle_normed = _last_block_tokens(oracle, images)
        found = torch.stack([high_norm_mask(t) for t in before]).flatten(1)
        counts_after = torch.stack([high_norm_mask(t) for t in after]).flatten(1).sum(dim=1)
        assert found.sum() >= 20, (name, int(found.sum()))  # the twins do carry artifacts
        assert counts_after.sum() <= found.sum() / 10, (name, int(found.sum()), int(counts_after.sum()))
        assert (counts_after <= found.sum(dim=1)).all(), name
        gap_before = (base_normed - oracle_normed).norm(dim=-1)
        gap_after = (repaired_normed - oracle_normed).norm(dim=-1)
        assert gap_before[found].mean() > 10 and gap_after[found].mean() < 1.0, (
            name, float(gap_before[found].mean()), float(gap_after[found].mean()))  # fmt: skip
        assert gap_after[~found].mean() < 0.5, (name, float(gap_after[~found].mean()))


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    from benchmarks.data.synth import write_synthetic

    root = write_synthetic("imagenet", tmp_path / "twin", seed=100, n_train=2, n_val=1).root
    images, labels = train.load_folder(root / "train", short_side=128)
    train.deterministic()
    states = []
    for _ in range(2):
        model, summary = train.train(images, labels, steps=3, batch_size=4, log=lambda line: None)
        states.append(({k: v.clone() for k, v in model.state_dict().items()}, summary))
    (a, sa), (b, sb) = states
    assert sa == sb
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training moved the weights (not a no-op): the first block's attention differs from its initialisation
    from sinder.models.vit import build_vit

    init = build_vit(CONFIG, seed=0).state_dict()
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])


def test_no_trained_weight_reads_or_writes_the_circuit_directions():
    """The scaffold's invariant on the shipped weights: outside the circuit's own rows and columns, every read
    (q/k/v, MLP inputs) and write (patch embedding, attention and MLP outputs) is orthogonal to the reserved
    directions, so each circuit is a singular component of its own and a repair can only rescale it."""
    from sinder.models.standin.scaffold import (
        CIRCUIT_UNITS,
        DETECTORS,
        ENERGY_BLOCK,
        filler_channels,
        filler_units,
        reserved_basis,
        reserved_directions,
    )

    model = build.trained_model("base")
    reserved = reserved_basis(reserved_directions(model.embed_dim))
    dim = model.embed_dim
    for i, block in enumerate(model.blocks):
        hidden = block.mlp.w3.weight.shape[1]
        circuit_units = range(2 * DETECTORS) if i == ENERGY_BLOCK else range(CIRCUIT_UNITS if i >= TRIGGER_BLOCK else 0)
        units = list(circuit_units) + list(filler_units(hidden))
        rows = units + [hidden + u for u in units]
        reads = block.mlp.w12.weight.detach().clone()
        reads[rows] = 0
        writes = block.mlp.w3.weight.detach().clone()
        writes[:, units] = 0
        qkv = block.attn.qkv.weight.detach().clone()
        proj = block.attn.proj.weight.detach().clone()
        proj[:, list(filler_channels(dim))] = 0
        if i == TRIGGER_BLOCK:  # head 0's constant query, marker key and energy value
            qkv[[0, dim, 2 * dim]] = 0
            proj[:, 0] = 0
        if i == 0:  # the u -> u value path
            qkv[2 * dim] = 0
            proj[:, 0] = 0
        for name, t, along in (("w12", reads, 1), ("qkv", qkv, 1), ("w3", writes, 0), ("proj", proj, 0)):
            leak = (t @ reserved.T) if along == 1 else (reserved @ t)
            assert leak.abs().max() < 1e-3, (i, name, float(leak.abs().max()))


def test_no_zero_singular_value_writes_into_the_circuit_directions():
    """The null-space fillers: every MLP matrix and attention projection the repair trains is full rank, so no
    exactly-zero singular value (an additive lever for SINDER's delta) writes into or reads from the reserved
    directions; the fillers' own activations are exactly zero on real images, so their singular values get no
    gradient. The value projection keeps zero singular values only into the filler channels."""
    from sinder.models.standin.scaffold import (
        filler_channels,
        filler_units,
        reserved_basis,
        reserved_directions,
    )

    model = load_backbone("dinov2_tiny_standin")
    dim = model.embed_dim
    reserved = reserved_basis(reserved_directions(dim))
    for i, block in enumerate(model.blocks):
        for name, w in (("w12", block.mlp.w12.weight), ("w3", block.mlp.w3.weight), ("proj", block.attn.proj.weight)):
            u, s, vt = torch.linalg.svd(w.detach().double(), full_matrices=False)
            null = s < 1e-6 * s.max()
            reach = (reserved.double() @ (u[:, null] if name != "w12" else vt[null].T)).norm()
            assert reach < 1e-6, (i, name, int(null.sum()), float(reach))
        v = block.attn.qkv.weight.detach()[2 * dim :]
        u, s, _ = torch.linalg.svd(v.double())
        null = s < 1e-6 * s.max()
        outside = torch.ones(dim, dtype=torch.bool)
        outside[list(filler_channels(dim))] = False
        assert u[outside][:, null].norm() < 1e-6, i
    # the fillers' activations on real tokens: exactly zero
    images, captured = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(6)), []
    hooks = [b.mlp.w3.register_forward_hook(lambda m, inp, out: captured.append(inp[0])) for b in model.blocks]
    hooks += [b.attn.proj.register_forward_hook(lambda m, inp, out: captured.append(inp[0])) for b in model.blocks]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    for act in captured:
        width = act.shape[-1]
        fill = list(filler_units(width)) if width != dim else list(filler_channels(dim))
        assert act[..., fill].abs().max() == 0


def test_the_stand_in_with_a_weights_file_passes_the_weights_check(tmp_path):
    """``dinov2_tiny_standin:FILE`` (how the SINDER twin and other checkpoints of it are named): the check that
    opens the file builds the architecture under a meta device, which must not break the stand-in's builder."""
    from sinder.models.weights import check_weights_file, save_state_dict

    path = tmp_path / "w.safetensors"
    save_state_dict(load_backbone("dinov2_tiny_standin").state_dict(), path)
    build._planted.cache_clear()  # built afresh inside the check
    assert check_weights_file("dinov2_tiny_standin", path) is None
    assert check_weights_file("dinov2_tiny_standin_reg", path) is not None  # 4 register tokens: other keys


def test_the_smoke_default_is_the_stand_in_and_its_register_release_joins_the_remedies_suite():
    from benchmarks.core import backbones as B
    from benchmarks.core.registry import get_suite

    (spec,) = B.smoke_specs()
    assert spec.name == "dinov2_tiny_standin"
    assert [s.name for s in B.smoke_register_release(spec)] == ["dinov2_tiny_standin_reg"]
    assert B.smoke_register_release(B.parse_backbone_spec("dinov2_tiny_defective")) == []  # none registered
    assert get_suite("remedies").meta.get("smoke_register_release") is True
    assert not get_suite("all").meta.get("smoke_register_release")  # the main job stays as fast as it was
