import json
import math

import numpy as np
import pytest
import torch
from conftest import load_parity_model

from sinder.defects import detect as d
from sinder.models.vit import build_vit


def test_mask_matches_the_official_code(sinder_parity):
    ref, meta, tokens = sinder_parity
    mask = d.find_defects(tokens, ref["nu_5"], mu=meta["mask_thr"])
    assert mask.dtype == torch.bool and mask.shape == (9, 11)
    assert torch.equal(mask, ref["mask"].bool())
    assert torch.nonzero(mask).tolist() == meta["defects"]


def test_border_option_flags_anywhere(sinder_parity):
    ref, meta, tokens = sinder_parity
    # Independent computation in numpy: |cos| and mean + 4 * sample std.
    x = tokens.double().numpy()
    nu = ref["nu_5"].double().numpy()
    logits = np.abs(x @ nu) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(nu))
    expected = logits > logits.mean() + 4 * logits.std(ddof=1)
    anywhere = d.find_defects(tokens, ref["nu_5"], exclude_border=False)
    assert np.array_equal(anywhere.numpy(), expected)
    assert int(anywhere.sum()) > int(ref["mask"].sum())  # the fixture plants one defect on the border
    assert torch.equal(anywhere & ~d.border_mask(9, 11), ref["mask"].bool())
    assert torch.allclose(d.defect_logits(tokens, ref["nu_5"]).double(), torch.from_numpy(logits), atol=1e-6)


def test_sign_and_scale_of_nu_do_not_matter(sinder_parity):
    ref, _, tokens = sinder_parity
    assert torch.equal(d.find_defects(tokens, -3 * ref["nu_5"]), ref["mask"].bool())


def test_uniform_map_has_no_defects():
    tokens = torch.ones(6, 7, 5)
    assert not d.find_defects(tokens, torch.randn(5)).any()


def test_shape_errors_name_the_input():
    with pytest.raises(ValueError, match="H x W x D token map"):
        d.find_defects(torch.zeros(10, 5), torch.zeros(5))
    with pytest.raises(ValueError, match=r"expected \(5,\), the token width"):
        d.find_defects(torch.zeros(3, 3, 5), torch.zeros(4))
    with pytest.raises(ValueError, match="one per layer"):
        d.count_defects([torch.zeros(3, 3, 5)], [])


def planted_maps(nu, n_images=3, size=8, dim=16, seed=0):
    """Random tokens with a few big tokens along +nu (plus noise) per image; returns maps, masks."""
    gen = torch.Generator().manual_seed(seed)
    maps, masks = [], []
    for i in range(n_images):
        tokens = torch.randn(size, size, dim, generator=gen, dtype=torch.float64)
        mask = torch.zeros(size, size, dtype=torch.bool)
        for r, c in [(2, 3), (5, 5), (3 + i % 3, 1 + i)]:
            tokens[r, c] = 40 * nu + torch.randn(dim, generator=gen, dtype=torch.float64)
            mask[r, c] = True
        maps.append(tokens)
        masks.append(mask)
    return maps, masks


def angle(a, b):
    cos = float(a @ b / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def test_statistics_against_direct_computation():
    nu = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64), dim=0)
    maps, masks = planted_maps(nu)
    stats, direction = d.layer_statistics(maps, masks, nu)
    norms = [m.norm(dim=-1) for m in maps]
    assert stats.n_images == 3 and stats.n_tokens == 192 and stats.n_defects == 9
    assert stats.mean_norm_defective == pytest.approx(float(torch.cat([n[k] for n, k in zip(norms, masks)]).mean()))
    assert stats.mean_norm_normal == pytest.approx(float(torch.cat([n[~k] for n, k in zip(norms, masks)]).mean()))
    # Pairwise angles by brute force.
    within = []
    for m, k in zip(maps, masks):
        vecs = m[k]
        within.append(np.mean([angle(vecs[i], vecs[j]) for i in range(3) for j in range(i + 1, 3)]))
    assert stats.angle_within_defects == pytest.approx(float(np.mean(within)), abs=1e-6)
    flat = maps[0].reshape(-1, 16)
    brute_all = np.mean([angle(flat[i], flat[j]) for i in range(64) for j in range(i + 1, 64)])
    assert d.mean_pairwise_angle(flat) == pytest.approx(brute_all, abs=1e-6)
    means = [m[k].mean(dim=0) for m, k in zip(maps, masks)]
    brute_between = np.mean([angle(means[i], means[j]) for i in range(3) for j in range(i + 1, 3)])
    assert stats.angle_between_images == pytest.approx(brute_between, abs=1e-6)
    assert stats.angle_within_defects < 10 and stats.angle_within_all > 60
    assert stats.angle_to_nu < 5 and d.acute_angle(direction, nu) == pytest.approx(stats.angle_to_nu, abs=1e-4)
    assert stats.to_dict()["n_defects"] == 9


def test_empirical_direction_is_sign_free():
    nu = torch.nn.functional.normalize(torch.arange(1.0, 9.0, dtype=torch.float64), dim=0)
    defects = torch.stack([nu, -nu, 1.1 * nu, -0.9 * nu])
    direction = d.empirical_direction(defects)
    assert abs(float(direction.double() @ nu)) == pytest.approx(1.0, abs=1e-6)
    assert d.empirical_direction(torch.zeros(0, 8)) is None


def test_statistics_without_defects_are_undefined_not_wrong():
    maps = [torch.randn(4, 4, 8)]
    stats, direction = d.layer_statistics(maps, [torch.zeros(4, 4, dtype=torch.bool)], torch.randn(8))
    assert direction is None and stats.n_defects == 0
    assert math.isnan(stats.mean_norm_defective) and math.isnan(stats.angle_to_nu)
    record = stats.to_dict()
    assert record["mean_norm_defective"] is None and record["angle_within_all"] is not None
    json.dumps(record)  # serializable as is


def test_high_norm_mask_and_clear_images():
    nu = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=0)
    maps, masks = planted_maps(nu, n_images=1, size=12, dim=64)
    assert torch.equal(d.high_norm_mask(maps[0]), masks[0])
    layer_maps = [torch.randn(12, 12, 64, dtype=torch.float64), maps[0]]
    counts = d.count_defects(layer_maps, [nu, nu])
    assert counts[1] == 3  # all three planted defects are interior
    assert not d.is_clear(layer_maps, [nu, nu], sigma=3)
    assert d.is_clear(layer_maps, [nu, nu], sigma=4)


def test_patch_token_grids_are_the_unnormalized_block_outputs():
    arch, state, ref = load_parity_model("dinov2_tiny_swiglu")
    model = build_vit(arch)
    model.load_state_dict(state)
    x = ref["input"]
    grids = d.patch_token_grids(model, x)
    assert len(grids) == 6 and grids[0].shape == (2, 4, 4, 96)
    for i in range(2, 6):  # the fixture holds the last 4 blocks, without norm, as B x D x H x W
        assert torch.allclose(grids[i].permute(0, 3, 1, 2), ref[f"intermediate_norm0_{i - 2}_patch"], atol=1e-5)
    subset = d.patch_token_grids(model, x, blocks=[5, 3])
    assert torch.equal(subset[0], grids[3]) and torch.equal(subset[1], grids[5])


def test_analyze_command_writes_statistics_and_figures(tmp_path, capsys):
    from PIL import Image

    from benchmarks.cli import main
    from sinder.models.defective import sample_images

    folder = tmp_path / "images"
    folder.mkdir()
    images = sample_images(3, 224, seed=4)
    for i, img in enumerate(images):
        arr = img.numpy().transpose(1, 2, 0) * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])
        Image.fromarray((arr.clip(0, 1) * 255).astype("uint8")).save(folder / f"img{i}.png")
    out = tmp_path / "out"
    rc = main(["analyze", "--backbone", "dinov2_tiny_defective", "--images", str(folder), "--out", str(out),
               "--n-samples", "2000", "--resolution", "224", "--max-images", "2"])
    assert rc == 0
    record = json.loads((out / "analysis.json").read_text())
    assert record["settings"]["n_images"] == 2 and len(record["layers"]) == 8
    assert record["weights_sha256"] and record["directions"]["n_samples"] == 2000
    assert len(record["eq5_counts"]) == 2 and all(len(row) == 8 for row in record["eq5_counts"])
    last = record["layers"][-1]
    assert last["high_norm"]["n_defects"] >= 2  # the defective model shows defects on these images
    assert last["high_norm"]["mean_norm_defective"] > 5 * last["high_norm"]["mean_norm_normal"]
    assert last["angle_to_empirical"]["cumulative"] < 20
    for name in ("pca_norm", "angles", "norm_violins"):
        assert (out / record["figures"][name].split("/")[-1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "eq5/img" in printed and "analysis.json" in printed
    assert main(["analyze", "--backbone", "dinov2_tiny_defective", "--images", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
