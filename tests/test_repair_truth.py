"""Issue 10: the repair's report tells the truth about every held-out image, the tiny preset's documented repair
leaves none worse, presets carry their own scale, resume does not double count, bad images and bad configs
fail early and clearly, and each rule has one definition."""

import contextlib
import functools
import io
import json
from pathlib import Path

import pytest
import torch
from simulated_kill import killed_at

import sinder.repair.job as repair_job
from benchmarks.cli import main
from sinder.defects.census import census, compare, compare_checkpoints
from sinder.defects.detect import find_defects, high_norm_mask, patch_token_grids
from sinder.defects.linearize import singular_defect_directions
from sinder.models.weights import load_backbone, save_state_dict
from sinder.repair.config import RepairConfig, preset_defaults
from sinder.repair.run import RepairResult, RepairRun
from sinder.utils.images import load_image
from sinder.utils.synthetic_images import write_synthetic_photos

BACKBONE = "dinov2_tiny_defective"
RES = 112


def damaged_state():
    """The constructed model with the sign of its block-0 energy writer flipped: what a repair step that drives
    that singular value through zero does. The image-mean threshold turns into an addition and whole images
    fire, a regression that the old report (Eq. 5 along the original directions) counted as an improvement."""
    model = load_backbone(BACKBONE)
    with torch.no_grad():
        model.blocks[0].mlp.w3.weight[:, :2] *= -1
    return model.state_dict()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_synthetic_photos(tmp_path_factory.mktemp("photos"), 12, size=128, seed=5)


@pytest.fixture(scope="module")
def damaged_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("damaged") / "damaged.safetensors"
    save_state_dict(damaged_state(), path)
    return path


# ----------------------------------------------------------------------------------------------- 1. the report
def test_an_image_made_worse_is_reported_warned_and_fails_ci(photos, damaged_file, tmp_path, monkeypatch):
    """A repair that leaves images worse (forced here: its result is the damaged model) is reported per image,
    warned about by name on stderr, and --fail-on-regression turns it into exit 4."""
    real_run = RepairRun.run

    def forced_regression(self, resume=False):
        result = real_run(self, resume)  # the real loop (2 iterations), then the damaged weights as its output
        return RepairResult(**{**result.__dict__, "state_dict": damaged_state()})

    monkeypatch.setattr(RepairRun, "run", forced_regression)
    config = tmp_path / "c.yaml"
    config.write_text("max_iters: 2\nholdout_images: 6\nn_samples: 4000\n")
    out = tmp_path / "r.safetensors"
    args = ["repair", "--backbone", BACKBONE, "--images", str(photos), "--out", str(out), "--config", str(config),
            "--device", "cpu", "--no-progress"]
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        assert main([*args, "--fail-on-regression"]) == 4
    report = json.loads(out.with_name("r.report.json").read_text())
    worse = report["worse_images"]
    assert report["images_made_worse"] == len(worse) >= 1
    assert "WARNING" in err.getvalue()
    for entry in worse:
        assert Path(entry["image"]).name in err.getvalue() and entry["reasons"]
    # Independent check of one flagged image: its median norm in the last block jumped or it gained tokens.
    before, after = load_backbone(BACKBONE), load_backbone(BACKBONE, weights=out)
    image = load_image(worse[0]["image"], RES)[None]
    gb, ga = patch_token_grids(before, image)[-1][0], patch_token_grids(after, image)[-1][0]
    assert (ga.norm(dim=-1).median() > 2 * gb.norm(dim=-1).median()
            or int(high_norm_mask(ga).sum()) > int(high_norm_mask(gb).sum()))
    # Per image and per block, before and after, in the report.
    for key in ("defects_before", "defects_after"):
        rows = report[key]["per_image"]
        assert len(rows) == 6 and all(len(r["high_norm"]) == len(r["eq5"]) == 8 for r in rows)
    # Without the flag, the same run warns but exits 0.
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        assert main([*args[:6], str(tmp_path / "again.safetensors"), *args[7:]]) == 0
    assert "WARNING" in err.getvalue()


def test_census_counts_eq5_along_the_measured_models_own_directions(photos, tmp_path):
    """The second checkpoint (the constructed model of seed 1: another defect direction) is measured along its
    own directions, not the first's."""
    from sinder.models.defective import defective_tiny_state_dict

    clamped_file = tmp_path / "seed1.safetensors"
    save_state_dict(defective_tiny_state_dict(1), clamped_file)
    images = sorted(photos.glob("*.png"))[:4]
    record = compare_checkpoints(BACKBONE, None, str(clamped_file), images, RES, method="expectation")
    clamped = load_backbone(BACKBONE, weights=clamped_file)
    own = singular_defect_directions(clamped, method="expectation")
    original = singular_defect_directions(load_backbone(BACKBONE), method="expectation")
    assert any(torch.nn.functional.cosine_similarity(a, b, dim=0).abs() < 0.9 for a, b in zip(own, original))
    for path, row in zip(images, record["second"]["per_image"]):
        grids = patch_token_grids(clamped, load_image(path, RES)[None])
        assert row["eq5"] == [int(find_defects(g[0], own[i]).sum()) for i, g in enumerate(grids)]
        assert row["high_norm"] == [int(high_norm_mask(g[0]).sum()) for g in grids]
    assert record["first"]["weights"] != record["second"]["weights"]


def test_analyze_compare_shows_the_census_of_two_checkpoints(photos, damaged_file, tmp_path):
    args = ["analyze", "--backbone", BACKBONE, "--images", str(photos), "--max-images", "4", "--resolution",
            str(RES), "--method", "expectation", "--out", str(tmp_path / "cmp"), "--compare", "own", str(damaged_file)]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        assert main([*args, "--fail-on-regression"]) == 4
    record = json.loads((tmp_path / "cmp" / "census.json").read_text())
    assert "images made worse" in out.getvalue() and "WARNING" in err.getvalue()
    assert record["comparison"]["images_made_worse"] >= 1
    # A checkpoint against itself: nothing worse, exit 0.
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*args[:-2], "own", "own", "--fail-on-regression"]) == 0


def test_compare_flags_more_tokens_and_whole_image_jumps():
    def row(name, high, median):
        return {"image": name, "high_norm": high, "median_norm": median, "max_over_median": [1.0] * 2,
                "eq5": [0, 0]}

    def record(rows):
        return {"images": len(rows), "per_image": rows, "eq5_defects_per_layer": [0, 0],
                "high_norm_tokens_per_layer": [sum(r["high_norm"][i] for r in rows) for i in range(2)]}

    before = record([row("a", [0, 2], [1, 1]), row("b", [0, 0], [1, 1]), row("c", [1, 3], [1, 1])])
    after = record([row("a", [0, 0], [1, 1]), row("b", [0, 0], [1, 5]), row("c", [2, 1], [1, 1])])
    result = compare(before, after)
    assert [w["image"] for w in result["worse_images"]] == ["b", "c"]
    assert result["high_norm_last_block"] == [5, 1]
    assert result["high_norm_removed_fraction_last_block"] == pytest.approx(0.8)


# ---------------------------------------------------------------------- 2. the tiny preset's documented repair
def test_constructed_model_never_fires_on_a_whole_image():
    """The trigger compares a token's z^2 with its image's mean z^2 carried in f: f must be >= 0, else whole
    images fire (8 of the 120 ImageNet-twin images did before blocks 0-1 stopped writing into u, e, f)."""
    from sinder.models.defective import Circuit, _construct, sample_images
    from sinder.utils.images import resize_center_crop, to_normalized_tensor
    from sinder.utils.synthetic_images import synthetic_photos

    model, dirs = _construct(0, Circuit())
    photos = torch.stack([to_normalized_tensor(resize_center_crop(p, RES)) for p in synthetic_photos(16, 128, 3)])
    for images in (photos, sample_images(8, RES, seed=4)):
        with torch.no_grad():
            tokens = model.prepare_tokens_with_masks(images)
            tokens = model.blocks[1](model.blocks[0](tokens))
            last = patch_token_grids(model, images)[-1]
        # f after block 1 carries the image mean of n.e >= 0 (up to rounding).
        assert float((tokens @ dirs["f"]).min()) > -1e-4
        median = last.norm(dim=-1).flatten(1).median(dim=1).values
        assert float(median.max()) < 3 * float(median.min())  # no image's tokens all blown up


@pytest.mark.slow
def test_documented_tiny_repair_halves_defects_and_leaves_no_unseen_image_worse(tmp_path):
    """The tiny preset's defaults (no flags) trained on the synthetic ImageNet twin, measured on images of two
    other synthetic datasets it has never seen."""
    from benchmarks.data.synth import write_synthetic

    train = write_synthetic("imagenet", tmp_path / "imagenet", seed=0, n_train=6, n_val=1).root / "train"
    from sinder.utils.images import list_images

    unseen = []
    for name, images in (("ade20k", "ADEChallengeData2016/images"), ("cityscapes", "leftImg8bit")):
        root = write_synthetic(name, tmp_path / name, seed=1, n_train=8, n_val=2).root
        unseen += list_images(root / images)
    base, defaults = preset_defaults(BACKBONE)
    config = RepairConfig.from_mapping({"holdout_images": 0}, base=base)
    out = tmp_path / "tiny.safetensors"
    report = repair_job.repair_checkpoint(BACKBONE, train, out, config=config, device="cpu", progress=False,
                                          defaults=defaults)
    assert report["defaults"] == "preset dinov2_tiny_defective" and report["config"]["resolution"] == RES
    assert report["iterations"] <= config.max_iters == 300
    record = compare_checkpoints(BACKBONE, None, str(out), unseen, RES, method="expectation")
    before, after = record["comparison"]["high_norm_last_block"]
    assert before >= 6, before
    assert after <= before / 2, (before, after)
    assert record["comparison"]["images_made_worse"] == 0, record["comparison"]["worse_images"]


# -------------------------------------------------------------------------------------------- 3. preset scale
def test_presets_carry_their_own_scale(tmp_path):
    from sinder.cli.repair import build_config

    def args(backbone, **kw):
        base = dict(backbone=backbone, config=None, paper=False, max_iters=None, num_images=None, resolution=None)
        return type("Args", (), {**base, **kw})()

    tiny, where = build_config(args(BACKBONE))
    assert where == "preset dinov2_tiny_defective"
    assert (tiny.resolution, tiny.sigma, tiny.limit_layers) == (112, 1, 4)
    official, where = build_config(args("dinov2_vitg14"))
    assert where == "official" and official == RepairConfig()
    # Flags and the config file still win over the preset's defaults.
    (tmp_path / "c.yaml").write_text("sigma: 2\n")
    tiny, _ = build_config(args(BACKBONE, config=tmp_path / "c.yaml", resolution=224))
    assert (tiny.resolution, tiny.sigma, tiny.window) == (224, 2, 50)


# -------------------------------------------------------------------------------------------- 4. resume
@functools.cache
def _directions():
    return singular_defect_directions(load_backbone(BACKBONE), method="expectation")  # no sampling cost


def _run(files, work_dir, config, crash_at=None, resume=False, load=None):
    run = RepairRun(load_backbone(BACKBONE), files, config, work_dir,
                    killed_at(load or functools.partial(load_image, resolution=RES), crash_at),
                    directions=_directions(), device="cpu", progress=False)
    return run.run(resume=resume)


def small(**kw):
    return RepairConfig(**{**dict(resolution=RES, max_iters=12, window=50, n_samples=20_000, checkpoint_every=5,
                                  limit_layers=4, sigma=1), **kw})


def test_resume_after_kill_before_first_checkpoint_counts_each_iteration_once(photos, tmp_path):
    files = sorted(photos.glob("*.png"))
    straight = _run(files, tmp_path / "a", small(checkpoint_every=50))
    with pytest.raises(KeyboardInterrupt):
        _run(files, tmp_path / "b", small(checkpoint_every=50), crash_at=7)  # no checkpoint yet
    resumed = _run(files, tmp_path / "b", small(checkpoint_every=50), resume=True)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log] == list(range(12))
    assert resumed.iterations_with_loss == straight.iterations_with_loss
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_resume_sums_wall_time_and_may_lower_the_learning_rate(photos, tmp_path):
    files = sorted(photos.glob("*.png"))
    with pytest.raises(KeyboardInterrupt):
        _run(files, tmp_path / "w", small(), crash_at=6)
    resumed = _run(files, tmp_path / "w", small(lr=0.001), resume=True)
    assert [seg["start_iteration"] for seg in resumed.segments] == [0, 5]  # resumed from the checkpoint at 5
    assert [seg["lr"] for seg in resumed.segments] == [0.005, 0.001]
    assert resumed.wall_time_s == pytest.approx(sum(seg["wall_time_s"] for seg in resumed.segments))
    assert resumed.segments[0]["wall_time_s"] > 0
    # Other fields are still part of the identity.
    with pytest.raises(ValueError, match="config"):
        _run(files, tmp_path / "w", small(sigma=2), resume=True)


def test_nonfinite_stop_then_resume_equals_a_run_without_it(photos, tmp_path, monkeypatch):
    import sinder.repair.step as repair_module

    files = sorted(photos.glob("*.png"))
    straight = _run(files, tmp_path / "s", small())
    real = repair_module.neighbor_loss
    calls = {"n": 0}

    def nan_once(*args, **kwargs):
        loss, *rest = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 4 else loss), *rest

    monkeypatch.setattr(repair_module, "neighbor_loss", nan_once)
    with pytest.raises(repair_module.NonFiniteLossError, match="lower lr") as err:
        _run(files, tmp_path / "n", small())
    assert "--resume" in str(err.value)
    saved = torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=True)
    # The saved history holds the iterations before the non-finite one only (that one runs again on resume).
    log = [json.loads(line) for line in (tmp_path / "n" / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log] == list(range(int(saved["iteration"])))
    assert saved["history"].tolist() == ([False] * 50 + [e["loss"] is None for e in log])[-50:]
    monkeypatch.setattr(repair_module, "neighbor_loss", real)
    resumed = _run(files, tmp_path / "n", small(), resume=True)
    assert len(saved["history"]) == 50 and resumed.nonfinite_steps == 0
    assert resumed.clear_fraction == straight.clear_fraction
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


# -------------------------------------------------------------------------------------------- 5. bad images
def test_a_corrupt_image_is_skipped_counted_and_resume_stays_valid(photos, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = sorted(photos.glob("*.png"))[:6]
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    truncated = folder / (files[2].stem + "_cut.jpg")
    truncated.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # a JPEG header and nothing else
    train = sorted(p for p in folder.iterdir())
    with pytest.warns(UserWarning, match="unreadable image"):
        with pytest.raises(KeyboardInterrupt):
            _run(train, tmp_path / "w", small(), crash_at=8)
    result = _run(train, tmp_path / "w", small(), resume=True)  # same file list: the checkpoint is valid
    assert result.bad_images == [str(truncated)] and result.iterations == 12
    log = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    index = train.index(truncated)
    skipped = [e["iter"] for e in log if e.get("skipped") == "unreadable"]
    assert skipped == [i for i in range(12) if i % len(train) == index] and len(skipped) >= 1
    with pytest.raises(ValueError, match="on_bad_image: skip"):
        _run(train, tmp_path / "stop", small(on_bad_image="stop"))


# -------------------------------------------------------------------------------------------- 6. bad config
@pytest.mark.parametrize("text, field", [
    ("mu: four\n", "'mu': 'four'"),
    ("sigma: '1'\n", "'sigma': '1'"),
    ("sigmaa: 3\n", "sigmaa"),
    ("sigma: [1\n", "not valid YAML at line"),
    ("limit_layers: 2.5\n", "'limit_layers': 2.5"),
    ("on_bad_image: ignore\n", "'on_bad_image': 'ignore'"),
    ("kernel: 4\n", "'kernel': 4"),
])
def test_bad_config_is_one_line_and_exit_2_before_any_work(tmp_path, photos, text, field):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    out = tmp_path / "r.safetensors"
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["repair", "--backbone", BACKBONE, "--images", str(photos), "--out", str(out),
                     "--config", str(config), "--no-progress"]) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and str(config) in lines[0], lines
    assert not out.with_name(out.name + ".work").exists()


def test_unwritable_out_or_work_folder_fails_before_any_work(tmp_path, photos, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a file where a folder should be: unwritable even for root
    loaded = []
    monkeypatch.setattr(repair_job, "load_backbone", lambda *a, **k: loaded.append(a))
    for out, work in ((blocker / "r.safetensors", tmp_path / "work"), (tmp_path / "r.safetensors", blocker / "w")):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main(["repair", "--backbone", BACKBONE, "--images", str(photos), "--out", str(out),
                         "--work-dir", str(work), "--no-progress"]) == 2
        assert "not writable" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
    assert not loaded  # failed before loading the backbone


def test_analyze_on_empty_or_corrupt_folder_is_one_line_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "broken.jpg").write_bytes(b"not a jpeg")
    for folder, message in ((empty, "no images"), (corrupt, "cannot read image")):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            assert main(["analyze", "--backbone", BACKBONE, "--images", str(folder), "--out",
                         str(tmp_path / "a"), "--resolution", "112", "--method", "expectation"]) == 2
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


# -------------------------------------------------------------------------------------------- 7. one definition
def test_kernel_reaches_the_loss_mask_and_the_census(tmp_path):
    from sinder.defects.loss import neighbor_loss

    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(10, 10, 64, generator=gen)
    nu = torch.randn(64, generator=gen)
    grid[1, 5] += 30 * nu  # one token 1 from the edge: inside for kernel 3, border for kernel 5
    grid[5, 5] += 30 * nu
    for kernel in (3, 5):
        _, mask, _, _ = neighbor_loss(grid, nu, kernel=kernel)
        assert torch.equal(mask, find_defects(grid, nu, kernel=kernel))
    assert bool(neighbor_loss(grid, nu, kernel=3)[1][1, 5]) and not bool(neighbor_loss(grid, nu, kernel=5)[1][1, 5])
    model = load_backbone(BACKBONE)
    images = [load_image(p, RES) for p in sorted(write_synthetic_photos(tmp_path, 2).glob("*.png"))]
    counts = {k: census(model, [0, 1], images.__getitem__, _directions(), kernel=k)["eq5_defects_per_layer"]
              for k in (3, 5)}
    grids = [patch_token_grids(model, im[None]) for im in images]
    assert counts[5] == [sum(int(find_defects(g[i][0], _directions()[i], kernel=5).sum()) for g in grids)
                         for i in range(8)]


def test_one_clear_rule():
    from sinder.defects.detect import enough_defects, first_defective, is_clear

    assert first_defective([0, 2, 5], sigma=3) == 2 and first_defective([0, 2, 5], sigma=6) is None
    assert first_defective([0, 1], sigma=0) == 1  # sigma = 0 behaves as 1, as in the official code
    assert not enough_defects(0, 0) and enough_defects(3, 3)
    nu = torch.zeros(64)
    nu[0] = 1
    grid = torch.randn(7, 7, 64, generator=torch.Generator().manual_seed(1)) * 0.1
    grid[3, 3, 0] = 10
    assert not is_clear([grid], [nu], sigma=0) and is_clear([grid], [nu], sigma=2)


def test_one_definition_of_a_block_linear():
    from sinder.repair.svd import is_block_linear, parametrize_singular_values, svd_layers

    for backbone in (BACKBONE, "dinov2_tiny_random"):
        model = load_backbone(backbone)
        keys = {k[: -len(".weight")] for k, v in model.state_dict().items() if is_block_linear(k, v)}
        parametrize_singular_values(model)
        assert set(svd_layers(model)) == keys and keys


def test_mu_has_one_default():
    import inspect

    import sinder.defects.census
    import sinder.defects.detect
    import sinder.defects.loss
    import sinder.plots.analysis
    from sinder.defects.detect import DEFAULT_MU

    defaults = [RepairConfig().mu]
    for fn in (sinder.defects.detect.find_defects, sinder.defects.detect.count_defects, sinder.defects.detect.is_clear,
               sinder.defects.loss.neighbor_loss, sinder.defects.census.census, sinder.defects.census.compare_checkpoints,
               sinder.plots.analysis.analyze):
        defaults.append(inspect.signature(fn).parameters["mu"].default)
    assert defaults == [DEFAULT_MU] * len(defaults)
    source = "".join(Path(m.__file__).read_text() for m in (sinder.defects.census, sinder.plots.analysis, sinder.defects.loss))
    assert "mu: float = 4.0" not in source and "mu=4.0" not in source


# -------------------------------------------------------------------------------------------- 8. ablations
def test_ablation_repairs_use_and_record_the_official_nonfinite_policy():
    from benchmarks.ablations.task import ConstraintAblation, ablation_config

    settings = ConstraintAblation().settings
    for profile in ("smoke", "paper"):
        for overrides in settings.values():
            config = ablation_config(overrides, ConstraintAblation().config(profile)["repair"], depth=8)
            assert config.on_nonfinite == "skip"
            assert config.differences_from_official()["on_nonfinite"] == "skip"
    assert ablation_config(settings["sv_bias"], "official", 40).trainable == "singular_values_and_biases"
