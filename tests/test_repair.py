import functools
import json

import pytest
import torch
from simulated_kill import killed_at

from sinder.defects.detect import find_defects
from sinder.models.vit import build_vit
from sinder.models.weights import load_backbone, read_state_dict
from sinder.repair.config import RepairConfig
from sinder.repair.job import repair_checkpoint
from sinder.repair.run import RepairRun
from sinder.repair.step import NonFiniteLossError, SinderStep
from sinder.repair.svd import parametrize_singular_values
from sinder.utils.images import load_image
from sinder.utils.synthetic_images import write_synthetic_photos

BACKBONE = "dinov2_tiny_defective"
RES = 112  # 8 x 8 token grid


def small_config(**overrides):
    base = dict(resolution=RES, num_images=24, max_iters=60, window=20, n_samples=20_000, checkpoint_every=10,
                holdout_images=6, limit_layers=4, sigma=1)
    return RepairConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_synthetic_photos(tmp_path_factory.mktemp("imgs"), 30)


@pytest.fixture(scope="module")
def repaired(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "repaired.safetensors"
    report = repair_checkpoint(BACKBONE, images, out, config=small_config(), progress=False, device="cpu")
    return out, report


def test_repair_removes_defects_on_held_out_images(repaired):
    out, report = repaired
    # Direction-free: the last block's high-norm tokens on the held-out images at least halve, none got worse.
    # (Eq. 5 after the repair is counted along the repaired model's own directions, where mean + 4 std still
    # flags the odd token of a clear image, so its removed fraction is not the measure of success.)
    before, after = report["high_norm_last_block"]
    assert before > 0 and after <= before / 2, (before, after)
    assert report["images_made_worse"] == 0, report["worse_images"]
    assert report["iterations_with_loss"] > 0
    assert report["stop_reason"] in {"clear", "max_iters"}
    # The output has exactly the input's keys and loads into a plain ViT of the same architecture.
    original = load_backbone(BACKBONE)
    state = read_state_dict(out)
    assert list(sorted(state)) == list(sorted(original.state_dict()))
    plain = build_vit(original.config)
    plain.load_state_dict(state, strict=True)
    # Only singular values of non-q/k parts moved: q and k rows, norms and embeddings are untouched.
    ref = original.state_dict()
    dim = original.embed_dim
    for key in ("pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.0.norm1.weight"):
        assert torch.equal(state[key], ref[key])
    for i in range(len(original.blocks)):
        assert torch.equal(state[f"blocks.{i}.attn.qkv.weight"][: 2 * dim], ref[f"blocks.{i}.attn.qkv.weight"][: 2 * dim])
    assert any(float((state[k] - ref[k]).abs().max()) > 1e-4 for k in ref if k.endswith("mlp.w3.weight")
               or k.endswith("mlp.fc2.weight"))
    # The report and its figure are beside the checkpoint.
    report_file = out.with_name(out.stem + ".report.json")
    assert json.loads(report_file.read_text())["output_sha256"] == report["output_sha256"]
    assert out.with_name(out.stem + ".sv_changes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["behaviour"] == "official"


def test_existing_output_is_never_overwritten(images, tmp_path):
    out = tmp_path / "keep.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--force"):
        repair_checkpoint(BACKBONE, images, out, config=small_config(max_iters=2), progress=False, device="cpu")
    assert out.read_bytes() == b"precious"


@functools.cache
def _directions():
    from sinder.defects.linearize import singular_defect_directions

    return singular_defect_directions(load_backbone(BACKBONE), n_samples=20_000)


def _run(images, work_dir, config, crash_at=None, resume=False):
    model = load_backbone(BACKBONE)
    files = sorted(images.glob("*.png"))[:20]
    load = killed_at(functools.partial(load_image, resolution=config.resolution), crash_at)
    run = RepairRun(model, files, config, work_dir, load, directions=_directions(), device="cpu", progress=False)
    return run.run(resume=resume)


def test_resume_after_kill_gives_the_same_result(images, tmp_path):
    config = small_config(max_iters=25, checkpoint_every=7, window=50)
    straight = _run(images, tmp_path / "a", config)
    with pytest.raises(KeyboardInterrupt):
        _run(images, tmp_path / "b", config, crash_at=17)
    # Without --resume, an existing run is not silently restarted.
    with pytest.raises(FileExistsError, match="--resume"):
        _run(images, tmp_path / "b", config)
    resumed = _run(images, tmp_path / "b", config, resume=True)
    assert resumed.iterations == straight.iterations == 25
    assert straight.iterations_with_loss > 0
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log] == list(range(25))
    # A different config refuses to resume (the learning rate alone may change: see test_repair_truth).
    with pytest.raises(ValueError, match="config"):
        _run(images, tmp_path / "b", small_config(max_iters=25, checkpoint_every=7, window=50, mu=3.5), resume=True)


def test_nonfinite_loss_stops_with_last_good_state(images, tmp_path, monkeypatch):
    import sinder.repair.step as repair_module

    real = repair_module.neighbor_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        loss, mask, target, alpha = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            loss = loss * float("nan")
        return loss, mask, target, alpha

    monkeypatch.setattr(repair_module, "neighbor_loss", sometimes_nan)
    config = small_config(max_iters=10)
    with pytest.raises(NonFiniteLossError, match="last good state"):
        _run(images, tmp_path / "nan", config)
    saved = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in saved["trainable"].values())
    calls["n"] = 0
    result = _run(images, tmp_path / "skip", small_config(max_iters=10, on_nonfinite="skip"))
    assert result.nonfinite_steps == 1 and result.iterations == 10


def test_gradient_window_equals_full_graph_gradients(images):
    """Starting the gradient pass at block layer-lambda+1 gives the official full-graph gradients."""
    config = small_config(limit_layers=2)
    model = load_backbone(BACKBONE)
    directions = _directions()
    parametrize_singular_values(model)
    step = SinderStep(model, directions, config)
    image = None
    for path in sorted(images.glob("*.png")):
        candidate = load_image(path, RES).unsqueeze(0)
        if step.find_loss_layer(candidate)[0] not in (None, 0, 1):  # deep enough for the window to matter
            image = candidate
            break
    assert image is not None, "the defective model shows no defect on any test image"
    result, loss = step(image)
    step.backward(loss)
    windowed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    start = result.layer - config.limit_layers + 1
    assert windowed and all(start <= int(n.split(".")[1]) <= result.layer for n in windowed)
    model.zero_grad(set_to_none=True)
    # The official way: every block with gradients from the start, then drop the early blocks' gradients.
    from sinder.defects.loss import neighbor_loss
    from sinder.repair.step import patch_grid

    tokens = model.prepare_tokens_with_masks(image)
    for block in model.blocks[: result.layer + 1]:
        tokens = block(tokens)
    full_loss, *_ = neighbor_loss(patch_grid(model, tokens, RES // 14, RES // 14), directions[result.layer])
    full_loss.backward()
    assert torch.allclose(full_loss, loss)
    for name, grad in windowed.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, atol=1e-6, rtol=1e-4), name


def test_ablation_settings_are_config_values(tmp_path):
    cfg_file = tmp_path / "table6.yaml"
    cfg_file.write_text("trainable: singular_values_and_biases\nlimit_layers: null\nsigma: 5\nmu: 4.5\n")
    config = RepairConfig.from_file(cfg_file)
    assert config.trainable == "singular_values_and_biases" and config.limit_layers is None
    assert (config.sigma, config.mu) == (5, 4.5)
    paper = RepairConfig.from_mapping({"behaviour": "paper"})
    assert paper.window == 500 and not paper.normalize_by_alpha and paper.behaviour() == "paper"
    assert RepairConfig().behaviour() == "official"
    assert RepairConfig(include_center=False).behaviour() == "mixed"
    with pytest.raises(ValueError, match="sigmaa"):
        RepairConfig.from_mapping({"sigmaa": 3})
    with pytest.raises(ValueError, match="trainable"):
        RepairConfig.from_mapping({"trainable": "all"})


def test_detection_used_by_the_loop_is_eq5(images):
    """The loop's defect count is exactly find_defects on the block output."""
    model = load_backbone(BACKBONE)
    directions = _directions()
    step = SinderStep(model, directions, small_config(sigma=1))
    image = load_image(sorted(images.glob("*.png"))[0], RES).unsqueeze(0)
    layer, count = step.find_loss_layer(image)
    grids = model.get_intermediate_layers(image, n=list(range(len(model.blocks))), norm=False)
    counts = [int(find_defects(g[0].reshape(8, 8, -1), d).sum()) for g, d in zip(grids, directions)]
    first = next((i for i, c in enumerate(counts) if c >= 1), None)
    assert layer == first
    if first is not None:
        assert count == counts[first]


def test_smoke_repair_clears_the_defective_model():
    from sinder.defects.census import census as defect_census
    from sinder.repair.smoke import repair_for_smoke
    from sinder.utils.images import resize_center_crop, to_normalized_tensor
    from sinder.utils.synthetic_images import synthetic_photos

    model = load_backbone(BACKBONE)
    held_out = [to_normalized_tensor(resize_center_crop(p, RES)) for p in synthetic_photos(8, 128, seed=99)]
    census = functools.partial(defect_census, images=list(range(8)), load=held_out.__getitem__,
                               directions=_directions())
    before = census(model)
    keys = list(model.state_dict())
    repaired = repair_for_smoke(model)
    after = census(repaired)
    assert list(repaired.state_dict()) == keys
    # Direction-free evidence: the high-norm tokens of the later blocks are gone and the norm spread collapses.
    assert sum(before["high_norm_tokens_per_layer"][2:]) >= 20
    assert sum(after["high_norm_tokens_per_layer"][2:]) <= 0.2 * sum(before["high_norm_tokens_per_layer"][2:])
    assert max(after["max_over_median_norm_per_layer"]) < 0.5 * max(before["max_over_median_norm_per_layer"])


def test_termination_rule_on_a_scripted_sequence(tmp_path):
    """Stop before an iteration when >= stop_fraction of the last `window` images were clear."""
    from sinder.repair.step import StepResult

    script = [True, True, False, True, False, True, True, True, True, False, True]  # True = clear image
    window, fraction = 4, 0.75

    # Independent statement of the rule: the window starts full of "had a loss".
    history = [False] * window
    expected = len(script)
    for t, clear in enumerate(script):
        if sum(history[-window:]) / window >= fraction:
            expected = t
            break
        history.append(clear)

    class Scripted:
        def __init__(self):
            self.calls = 0

        def __call__(self, image):
            clear = script[self.calls]
            self.calls += 1
            if clear:
                return StepResult(None, 0, None, None), None
            return StepResult(3, 3, 1.0, 1.0), torch.tensor(1.0)

        def backward(self, loss):
            pass

    model = build_vit("dinov2_tiny", seed=0)
    config = RepairConfig(window=window, stop_fraction=fraction, max_iters=len(script), checkpoint_every=0,
                          resolution=28)
    run = RepairRun(model, list(range(len(script))), config, tmp_path, load=lambda i: torch.zeros(3, 28, 28),
                    directions=[torch.ones(96)] * 6, progress=False)
    run.step_fn = Scripted()
    result = run.run()
    assert 0 < expected < len(script)
    assert result.iterations == expected == run.step_fn.calls
    assert result.stop_reason == "clear"
    assert result.iterations_with_loss == script[:expected].count(False)


@pytest.mark.slow
def test_repair_keeps_class_token_quality_and_frozen_parts_exact(tmp_path):
    """Smoke repair: held-out defects gone, KNN on the ImageNet twin within 2 points, q/k/biases bit-identical."""
    from benchmarks.classification.knn import evaluate_knn
    from benchmarks.data import open_dataset
    from benchmarks.data.synth import write_synthetic
    from sinder.repair.smoke import repair_for_smoke

    root = write_synthetic("imagenet", tmp_path / "imagenet", seed=3, n_train=20, n_val=20).root

    @torch.no_grad()
    def knn_top1(model):
        feats = {}
        for split in ("train", "val"):
            data = open_dataset("imagenet", root, split)
            images = torch.stack([load_image(path, RES) for path, _ in data.samples])
            (_, cls), = model.get_intermediate_layers(images, n=1, return_class_token=True)
            feats[split] = (torch.nn.functional.normalize(cls, dim=-1), torch.tensor(data.targets))
        out = evaluate_knn(*feats["train"], *feats["val"], ks=(10, 20), T=0.07)
        return out["metrics"]["top1"]

    model = load_backbone(BACKBONE)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    before = knn_top1(model)
    repaired = repair_for_smoke(model)
    after = knn_top1(repaired)
    # Quality kept: no loss beyond 2 points (on this twin the repair even helps: 97 -> 100 at seed 3, since
    # the class token no longer attends to high-norm defects).
    assert after >= before - 2.0, (before, after)
    state = repaired.state_dict()
    dim = repaired.embed_dim
    v_changed = 0
    for key, value in original.items():
        if key.endswith("attn.qkv.weight"):
            assert torch.equal(state[key][: 2 * dim], value[: 2 * dim]), key  # q and k rows
            v_changed += not torch.equal(state[key][2 * dim :], value[2 * dim :])
        elif key.endswith(".bias") or not key.startswith("blocks.") or "norm" in key or "gamma" in key:
            assert torch.equal(state[key], value), key
    assert v_changed >= 1
