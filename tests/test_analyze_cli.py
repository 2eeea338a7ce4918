"""`sinder-bench analyze` end to end on the constructed defective tiny DINOv2: every file, Figure 7 numbers, the
random-direction baseline (Figure 8) and the progress-bar direction path."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.cli import main
from sinder.defects.detect import (
    TokenAngleAccumulator,
    high_norm_mask,
    patch_token_grids,
    random_unit_direction,
)
from sinder.defects.linearize import linearized_directions
from sinder.models.defective import defective_tiny_state_dict, sample_images
from sinder.models.weights import load_backbone, save_state_dict
from sinder.plots.analysis import default_mask_layers, directions_with_progress
from sinder.remedies.clamp import clamp_singular_values
from sinder.utils.images import IMAGENET_MEAN, IMAGENET_STD, list_images, load_image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_SAMPLES = "1500"
# Default figure sizes at 100 dpi for the tiny model (8 layers), 2 mask images of 2 layers, 4 linear layer names.
EXPECTED_PNGS = {
    "pca_norm": ("pca_norm_last_layer.png", (900, 300)),
    "angles": ("angles_vs_layer.png", (800, 1050)),
    "angles_random_direction": ("angles_random_direction.png", (800, 550)),
    "norm_violins": ("norms_last_layer.png", (500, 400)),
    "norm_violins_per_layer": ("norms_per_layer.png", (600, 400)),
    "defect_masks": ("defect_masks.png", (600, 440)),
    "singular_value_differences": ("singular_value_differences.png", (800, 920)),
}


def write_images(folder, n=3, seed=4):
    folder.mkdir()
    for i, img in enumerate(sample_images(n, 224, seed=seed)):
        arr = img.numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
        Image.fromarray((arr.clip(0, 1) * 255).astype("uint8")).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    images = write_images(root / "images")
    clamped, _ = clamp_singular_values(defective_tiny_state_dict(0), 2.0)
    save_state_dict(clamped, root / "clamped.safetensors")
    out = root / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["analyze", "--backbone", "dinov2_tiny_defective", "--images", str(images), "--out", str(out),
                   "--n-samples", N_SAMPLES, "--resolution", "224", "--max-images", "2", "--mask-images", "2",
                   "--mask-layers", "7,2", "--compare-weights", str(root / "clamped.safetensors"), "--progress"])
    assert rc == 0
    return {"root": root, "images": images, "out": out, "record": json.loads((out / "analysis.json").read_text()),
            "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "clamped": clamped}


def test_writes_every_file_with_valid_pngs(run):
    out, record = run["out"], run["record"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["analysis.json", *(f for f, _ in EXPECTED_PNGS.values())])
    assert set(record["figures"]) == set(EXPECTED_PNGS)
    for key, (name, size) in EXPECTED_PNGS.items():
        path = out / name
        assert record["figures"][key] == str(path)
        assert path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.size == size, name
    assert record["settings"]["mask_layers"] == [2, 7] and record["settings"]["mask_images"] == 2
    assert "def-rand" in run["stdout"] and "7 figures" in run["stdout"]
    for bar in ("defect directions", "images", "singular values"):  # --progress: a bar per long step
        assert f"{bar}:" in run["stderr"]


def test_defect_mask_figure_shows_the_defects_in_red(run):
    rgb = np.asarray(Image.open(run["out"] / "defect_masks.png").convert("RGB")).astype(int)
    # Behind the masks the image is dimmed to [0.25, 0.75]: only the defect overlay reaches this red.
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    cell = 200  # 2 inches at 100 dpi; column 0 is the image itself, columns 1-2 the masks
    n_defects = int(np.array(run["record"]["eq5_counts"])[:, [2, 7]].sum())
    assert n_defects > 0
    assert 50 * n_defects < red[:, cell:].sum() < 200 * n_defects  # a token is about 11 x 11 px in a cell


def test_random_direction_statistics(run):
    record = run["record"]
    assert record["settings"]["random_direction"] == "normalized N(0, I), seed 0"
    for layer in record["layers"][2:]:  # defects from block 1 on; amplified from block 2
        nu, rand = layer["token_angles"]["nu"], layer["token_angles"]["random"]
        assert nu["defective"] < 25 < 70 < rand["defective"]  # nu_i is special, a random direction is not
        assert nu["defective"] < rand["defective"] - 45
        assert nu["defective"] < nu["normal"] - 40  # and nu_i separates defects from normal tokens
        assert abs(rand["defective"] - rand["normal"]) < 10  # a random direction does not
        assert layer["random_angle_to_empirical"] > 60
    assert record["layers"][0]["token_angles"]["nu"]["defective"] is None  # no defects in block 0

    # The last layer's random-direction means, recomputed independently over the same two images.
    model = load_backbone("dinov2_tiny_defective")
    rand = random_unit_direction(model.embed_dim, 0).double().numpy()
    assert np.isclose(np.linalg.norm(rand), 1.0)
    sums, counts = {True: 0.0, False: 0.0}, {True: 0, False: 0}
    for path in list_images(run["images"])[:2]:
        tokens = patch_token_grids(model, load_image(path, 224, 14)[None], blocks=[7])[0][0]
        mask = high_norm_mask(tokens).numpy().reshape(-1)
        x = tokens.reshape(-1, tokens.shape[-1]).double().numpy()
        cos = np.abs(x @ rand) / np.linalg.norm(x, axis=1)
        angles = np.degrees(np.arccos(np.clip(cos, 0, 1)))
        for flag in (True, False):
            sums[flag] += angles[mask == flag].sum()
            counts[flag] += int((mask == flag).sum())
    got = record["layers"][7]["token_angles"]["random"]
    assert got["defective"] == pytest.approx(sums[True] / counts[True], abs=1e-3)
    assert got["normal"] == pytest.approx(sums[False] / counts[False], abs=1e-3)
    assert counts[True] == record["layers"][7]["high_norm"]["n_defects"]


def test_singular_value_differences_match_svdvals(run):
    sv = run["record"]["singular_value_differences"]
    assert sv["top"] == 3 and sv["second"]["weights"] == "clamped.safetensors"
    assert sv["first"]["weights"] == "dinov2_tiny_defective"
    old, new = defective_tiny_state_dict(0), run["clamped"]
    diffs = sv["second_minus_first"]
    assert set(diffs) == {"attn.qkv", "attn.proj", "mlp.w12", "mlp.w3"}
    for name, rows in diffs.items():
        assert len(rows) == 8
        for block, row in enumerate(rows):
            key = f"blocks.{block}.{name}.weight"
            want = torch.linalg.svdvals(new[key].double())[:3] - torch.linalg.svdvals(old[key].double())[:3]
            assert np.allclose(row, want.numpy(), atol=1e-5), key
    assert diffs["mlp.w3"][1][0] < -1 and diffs["mlp.w12"][1][0] < -1  # the defect circuit's gains were cut


def test_mismatched_checkpoint_and_bad_layers_fail_before_any_work(run, tmp_path):
    out = tmp_path / "out"
    base = ["analyze", "--backbone", "dinov2_tiny_defective", "--images", str(run["images"]), "--out", str(out),
            "--resolution", "224"]
    for extra, message in ((["--compare-backbone", "dinov2_tiny_swiglu_random"], r"blocks\.6\..* not in the new one"),
                           (["--mask-layers", "2,8"], r"--mask-layers \[8\] out of range.*0\.\.7")):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main([*base, *extra]) == 2
        assert re.search(message, err.getvalue()) and len(err.getvalue().strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
        main([*base, "--mask-layers", "2,x"])
    assert "comma-separated list of layer indices" in err.getvalue()


def test_directions_with_progress_equal_linearized_directions_and_share_the_cache(tmp_path, capsys):
    model = load_backbone("dinov2_tiny_swiglu_random")
    ours = directions_with_progress(model, 300, 1, cache_dir=tmp_path, progress=True)
    assert "defect directions" in capsys.readouterr().err
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1
    reference = linearized_directions(model, 300, 1)  # computed afresh, no cache
    again = linearized_directions(model, 300, 1, cache_dir=tmp_path)  # must read our cache file
    assert list(tmp_path.iterdir()) == cached
    for kind, vectors in reference.directions.items():
        assert torch.equal(ours.directions[kind], vectors) and torch.equal(again.directions[kind], vectors)
    assert directions_with_progress(model, 300, 1, cache_dir=tmp_path, progress=True).fingerprint == ours.fingerprint
    assert "defect directions" not in capsys.readouterr().err  # a cache hit has no blocks to compute


def test_token_angle_accumulator_and_mask_layers():
    gen = torch.Generator().manual_seed(3)
    maps = [torch.randn(4, 5, 16, generator=gen) for _ in range(2)]
    masks = [torch.rand(4, 5, generator=gen) > 0.6 for _ in range(2)]
    d = torch.randn(16, generator=gen)
    acc = TokenAngleAccumulator({"d": d})
    for m, k in zip(maps, masks):
        acc.add(m, k)
    x = torch.cat([m.reshape(-1, 16) for m in maps]).double()
    flags = torch.cat([k.reshape(-1) for k in masks])
    angles = torch.rad2deg(torch.arccos((x @ d.double()).abs() / (x.norm(dim=1) * d.double().norm())))
    res = acc.result()["d"]
    assert res["defective"] == pytest.approx(float(angles[flags].mean()), abs=1e-4)
    assert res["normal"] == pytest.approx(float(angles[~flags].mean()), abs=1e-4)
    assert TokenAngleAccumulator({"d": d}).result() == {"d": {"defective": None, "normal": None}}
    with pytest.raises(ValueError, match="does not match the token grid"):
        acc.add(maps[0], masks[0][:3])
    assert torch.equal(random_unit_direction(16, 5), random_unit_direction(16, 5))
    assert not torch.equal(random_unit_direction(16, 5), random_unit_direction(16, 6))
    assert default_mask_layers(40) == [9, 19, 29, 39] and default_mask_layers(8) == [1, 3, 5, 7]
    assert default_mask_layers(2) == [0, 1]


def test_every_figure_names_the_backbone_and_the_table_explains_its_columns(run):
    from sinder.plots.analysis import TABLE_COLUMNS

    for key, (name, _) in EXPECTED_PNGS.items():
        with Image.open(run["out"] / name) as img:
            title = img.text.get("Title", "")
        if key == "singular_value_differences":  # names both checkpoints instead
            assert "clamped.safetensors" in title and "dinov2_tiny_defective" in title, title
        else:
            assert title.startswith("dinov2_tiny_defective"), (name, title)
    lines = run["stdout"].splitlines()
    header = next(i for i, line in enumerate(lines) if "eq5/img" in line and "layer" in line)
    assert lines[header - 1].startswith("dinov2_tiny_defective: 2 images")
    columns = lines[header].split()
    keys = [name for name, _ in TABLE_COLUMNS]
    assert " ".join(columns) == " ".join(keys)  # the header is exactly the legend's keys, in order
    start = next(i for i, line in enumerate(lines) if line.startswith("columns ("))
    legend = lines[start + 1 : start + 1 + len(keys)]
    width = max(len(k) for k in keys)
    assert [line[2 : 2 + width].strip() for line in legend] == keys
    assert all(len(line[2 + width :].strip()) > 10 for line in legend)  # each key has a meaning
