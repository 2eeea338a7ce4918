import json
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from benchmarks.cli import main as cli_main
from sinder.defects.detect import high_norm_mask, patch_token_grids
from sinder.models import defective as dm
from sinder.models.vit import build_vit
from sinder.models.weights import load_backbone
from sinder.remedies.ttr import (
    RegisterNeuron,
    apply_neuron_file,
    apply_test_time_registers,
    deviations,
    fit_register_neurons,
    load_neurons,
    register_values,
    save_neurons,
)
from sinder.utils.synthetic_images import write_synthetic_photos


# --------------------------------------------------------------------------------------------- the mechanism
def naive_ttr_forward(model, images, neurons):
    """Per block outputs of the variant init=patch_mean, value=per_unit written out step by step (one unit at a
    time), extra token included."""
    first_patch = 1 + model.num_register_tokens
    tokens = model.prepare_tokens_with_masks(images)
    tokens = torch.cat([tokens, tokens[:, first_patch:].mean(dim=1, keepdim=True)], dim=1)
    outputs = []
    for index, block in enumerate(model.blocks):
        tokens = tokens + block.ls1(block.attn(block.norm1(tokens)))
        h = block.norm2(tokens)
        mlp = block.mlp
        if hasattr(mlp, "w3"):
            x1, x2 = mlp.w12(h).chunk(2, dim=-1)
            hidden, out_layer = F.silu(x1) * x2, mlp.w3
        else:
            hidden, out_layer = mlp.act(mlp.fc1(h)), mlp.fc2
        hidden = hidden.clone()
        for n in neurons:
            if n.block != index:
                continue
            column = hidden[:, :, n.unit]
            extreme = column.max(dim=1).values if n.sign > 0 else column.min(dim=1).values
            hidden[:, first_patch:-1, n.unit] = 0.0
            hidden[:, -1, n.unit] = extreme
        tokens = tokens + block.ls2(out_layer(hidden))
        outputs.append(tokens)
    return outputs


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("preset", ["dinov2_tiny", "dinov2_tiny_swiglu", "dinov2_tiny_reg"])
@torch.no_grad()
def test_wrapper_matches_the_method_written_out_and_keeps_shapes(preset):
    model = build_vit(preset, seed=0)
    images = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    neurons = [RegisterNeuron(0, 3), RegisterNeuron(1, 5, sign=-1), RegisterNeuron(1, 9), RegisterNeuron(4, 7)]
    base = model.forward_features(images)
    wrapped = apply_test_time_registers(model, neurons, init="patch_mean", value="per_unit")  # the variants
    expected = naive_ttr_forward(model, images, neurons)
    first_patch = 1 + model.num_register_tokens

    features = wrapped.forward_features(images)
    final = expected[-1][:, :-1]  # the extra token never reaches the outputs
    normed = model.norm(final)
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
        assert features[key].shape == base[key].shape
    torch.testing.assert_close(features["x_prenorm"], final, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features["x_norm_patchtokens"], normed[:, first_patch:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features["x_norm_clstoken"], normed[:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(features["x_prenorm"], base["x_prenorm"], atol=1e-3)  # the neurons do act

    layers = wrapped.get_intermediate_layers(images, n=[1, 3], reshape=True, return_class_token=True, norm=False)
    rows, cols = 56 // 14, 70 // 14
    for (maps, cls), block in zip(layers, (1, 3)):
        assert maps.shape == (2, model.embed_dim, rows, cols)
        want = expected[block][:, first_patch:-1].reshape(2, rows, cols, -1).permute(0, 3, 1, 2)
        torch.testing.assert_close(maps, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cls, expected[block][:, 0], rtol=1e-5, atol=1e-5)
    assert wrapped(images).shape == (2, model.embed_dim)
    torch.testing.assert_close(wrapped.extra_token_output(images), expected[-1][:, -1], rtol=1e-5, atol=1e-5)

    # The base model is left as it was: no hooks remain and its outputs are unchanged.
    assert _hook_count(model) == 0
    torch.testing.assert_close(model.forward_features(images)["x_prenorm"], base["x_prenorm"], rtol=0, atol=0)
    assert wrapped.patch_size == model.patch_size and len(wrapped.blocks) == len(model.blocks)


@pytest.mark.parametrize("preset", ["dinov2_tiny", "dinov2_tiny_swiglu"])
@torch.no_grad()
def test_a_model_without_outliers_is_left_unchanged(preset):
    model = build_vit(preset, seed=0)
    images = dm.sample_images(6, 112, seed=3)
    neurons = fit_register_neurons(model, images.split(3), detection_block=-2, highest_block=3,
                                   selection="robust_z")
    assert neurons.fit["n_images"] == 6 and neurons.fit["outlier_tokens"] == 0 and neurons.neurons == []
    wrapped = apply_test_time_registers(model, neurons)
    assert wrapped.num_extra_tokens == 0
    base, after = model.forward_features(images), wrapped.forward_features(images)
    for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
        torch.testing.assert_close(after[key], base[key])
    torch.testing.assert_close(wrapped.get_intermediate_layers(images, n=2), model.get_intermediate_layers(images, n=2))


def test_bad_neurons_are_refused():
    model = build_vit("dinov2_tiny", seed=0)
    with pytest.raises(ValueError, match="outside this backbone's 6 blocks x 384 hidden units"):
        apply_test_time_registers(model, [(6, 0)])
    with pytest.raises(ValueError, match="outside"):
        apply_test_time_registers(model, [(0, 384)])
    with pytest.raises(ValueError, match="detection block 9 out of range"):
        fit_register_neurons(model, [torch.zeros(1, 3, 28, 28)], detection_block=9, threshold=1.0)
    with pytest.raises(ValueError, match="reference selection needs a token norm threshold"):
        fit_register_neurons(model, [torch.zeros(1, 3, 28, 28)])
    with pytest.raises(ValueError, match="init 'mean': use one of zeros, patch_mean"):
        apply_test_time_registers(model, [(0, 1)], init="mean")


# --------------------------------------------------------------------------------------------- the defective model
@pytest.fixture(scope="module")
def defective():
    return load_backbone(dm.PRESET_NAME)


@pytest.fixture(scope="module")
def fitted(defective):
    return fit_register_neurons(defective, dm.sample_images(32, 224, seed=0).split(16), selection="robust_z")


def _last_block_high_norm(model, images):
    (grids,) = patch_token_grids(model, images, blocks=[len(model.blocks) - 1])
    return sum(int(high_norm_mask(g).sum()) for g in grids), grids


@torch.no_grad()
def test_held_out_high_norm_tokens_fall_by_half_without_training(defective, fitted):
    assert fitted.settings["detection_block"] == 6 and fitted.settings["highest_block"] == 5
    assert len(fitted.neurons) == 50 and fitted.fit["images_with_outliers"] >= 28
    # The circuit's content units (block 0) and trigger units (block 1) are among the register neurons; block 0's
    # unit 1 is z * silu(-kappa z) <= 0, a unit that fires negatively at the outliers.
    signs = {(n.block, n.unit): n.sign for n in fitted.neurons}
    assert {(0, 0), (0, 1), (1, 0), (1, 1)} <= signs.keys() and signs[(0, 1)] == -1 and signs[(0, 0)] == 1

    held_out = dm.sample_images(16, 224, seed=1)  # fitted on seed 0
    before, _ = _last_block_high_norm(defective, held_out)
    wrapped = apply_test_time_registers(defective, fitted, init="patch_mean", value="per_unit")
    after, grids = _last_block_high_norm(wrapped, held_out)
    assert before >= 48  # about 8 per image
    # Measured: 124 -> 0. With top_k <= 8 the four amplifier blocks' units (highest scores: they respond to
    # outliers that already exist) fill the list, block 1's trigger still writes u and blocks 6-7 amplify it
    # again: about 6% fewer. The stand-in re-amplifies in every block, real models form outliers in a few.
    assert after <= before / 2
    # The outlier moved to the extra token: its norm is many times a patch token's.
    extra = wrapped.extra_token_output(held_out).norm(dim=-1)
    assert bool((extra > 5 * grids.norm(dim=-1).flatten(1).median(dim=1).values).all())


@torch.no_grad()
def test_fixed_threshold_outliers_are_the_tokens_above_it(defective):
    images = dm.sample_images(6, 224, seed=5)
    (grids,) = patch_token_grids(defective, images, blocks=[6])
    threshold = 20.0
    neurons = fit_register_neurons(defective, [images], threshold=threshold, top_k=4, highest_block=2,
                                   selection="robust_z")
    assert neurons.fit["outlier_tokens"] == int((grids.norm(dim=-1) > threshold).sum()) > 0
    assert neurons.settings["threshold"] == threshold and len(neurons.neurons) == 4
    assert all(n.block <= 2 for n in neurons.neurons)


def test_neuron_file_round_trip_and_checks(tmp_path, defective, fitted):
    path = tmp_path / "neurons.json"
    save_neurons(fitted, path)
    loaded = load_neurons(path, defective)
    assert apply_neuron_file(defective, path).register_neurons == fitted.neurons
    assert loaded.neurons == fitted.neurons and loaded.settings == fitted.settings
    assert loaded.weights_sha256 == defective.weights_sha256
    other = load_backbone("dinov2_tiny_swiglu_random")
    with pytest.raises(ValueError, match="was fitted on weights"):
        load_neurons(path, other)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_neurons(path)
    with pytest.raises(FileNotFoundError, match="ttr fit"):
        load_neurons(tmp_path / "missing.json")


def test_cli_fit_writes_the_neuron_file_and_keeps_an_existing_one(tmp_path, capsys, defective):
    images = write_synthetic_photos(tmp_path / "images", 6, size=256, seed=0)
    out = tmp_path / "neurons.json"
    base = ["ttr", "fit", "--backbone", dm.PRESET_NAME, "--images", str(images), "--out", str(out),
            "--top-k", "12", "--device", "cpu"]
    assert cli_main(base) == 2  # the reference selection has no threshold of its own
    assert "--selection reference needs --threshold" in capsys.readouterr().err and not out.exists()
    args = [*base, "--threshold", "20"]
    assert cli_main(args) == 0
    record = json.loads(out.read_text())
    assert record["weights_sha256"] == defective.weights_sha256 and record["backbone"] == dm.PRESET_NAME
    settings = record["settings"]
    assert (settings["selection"], settings["resolution"], settings["resize"], settings["threshold"]) == (
        "reference", 224, 256, 20.0)
    assert settings["top_k"] == 12 and deviations(settings) == []
    assert record["fit"]["n_images"] == 6 and len(record["neurons"]) == 12
    written = out.read_text()
    assert cli_main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == written
    assert cli_main([*args, "--resolution", "100", "--force"]) == 2
    assert "not a multiple of the patch size 14" in capsys.readouterr().err and out.read_text() == written
    robust = [*base[:-2], "--selection", "robust_z", "--max-images", "4", "--resolution", "112", "--force"]
    assert cli_main(robust) == 0
    settings = json.loads(out.read_text())["settings"]
    assert (settings["selection"], settings["resize"]) == ("robust_z", 128)
    assert [d.split(":")[0].split(" (")[0] for d in deviations(settings)] == [
        "ttr selection=robust_z", "ttr fit max_images=4", "ttr fit resolution=112"]


# --------------------------------------------------------------------------------------------- the official code
# Restated from the official repository, github.com/nickjiang2378/test-time-registers:
# - dinov2/dinov2/hub/hook_fn.py (commit 162562e7): `sign_max` and `activate_on_registers` with its defaults
#   scale=1.0, normal_values="zero"; a forward hook on `blocks[layer].mlp.act` (dinov2/dinov2/hub/backbones.py,
#   `dinov2_vitl14_tt_reg`) that edits the activation in place, for the first image of the batch only;
# - dinov2/dinov2/models/vision_transformer.py (`prepare_tokens_with_masks`): the register is a zero token appended
#   after the class and patch tokens have their position embeddings.
# Each image runs alone here, because the official hook edits `output[0]` only (a defect we do not reproduce).
def official_sign_max(values):
    largest, smallest = torch.max(values), torch.min(values)
    return largest if abs(largest) > abs(smallest) else smallest


def official_activate_on_registers(_module, _input, output, num_registers, neuron_indices):
    output[0, -num_registers:, neuron_indices] = official_sign_max(output[0, :, neuron_indices]).unsqueeze(0).expand(
        num_registers, -1)
    output[0, 1:-num_registers, neuron_indices] = 0


def official_tokens(model, image, layer_neurons):
    """The official model's tokens after the last block (1 x (1 + N + 1) x D, the register last)."""
    handles = []
    for layer, units in layer_neurons.items():
        mlp = model.blocks[layer].mlp
        hook = partial(official_activate_on_registers, num_registers=1, neuron_indices=units)
        if hasattr(mlp, "act"):
            handles.append(mlp.act.register_forward_hook(hook))
        else:  # SwiGLU, which the official hook does not cover: the same hook on the gated product (w3's input)
            handles.append(mlp.w3.register_forward_pre_hook(lambda m, args, hook=hook: hook(m, None, args[0])))
    try:
        x = model.prepare_tokens_with_masks(image)
        x = torch.cat([x, torch.zeros(x.shape[0], 1, x.shape[-1])], dim=1)
        for block in model.blocks:
            x = block(x)
    finally:
        for handle in handles:
            handle.remove()
    return x


@pytest.mark.parametrize("preset", ["dinov2_tiny", "dinov2_tiny_swiglu"])
@torch.no_grad()
def test_the_default_is_the_official_hook(preset):
    model = build_vit(preset, seed=0)
    images = torch.randn(3, 3, 56, 70, generator=torch.Generator().manual_seed(1))
    layer_neurons = {0: [3, 17, 40], 2: [5], 4: [7, 9]}
    neurons = [(layer, unit) for layer, units in layer_neurons.items() for unit in units]
    wrapped = apply_test_time_registers(model, neurons)  # the default: protocol reference
    features = wrapped.forward_features(images)
    official = torch.cat([official_tokens(model, image[None], layer_neurons) for image in images])
    torch.testing.assert_close(features["x_prenorm"], official[:, :-1], rtol=1e-5, atol=1e-5)
    # Our patch tokens are the sequence's patches (the official slice [2:] drops the first and takes the register).
    torch.testing.assert_close(features["x_norm_patchtokens"], model.norm(official)[:, 1:-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(features["x_norm_clstoken"], model.norm(official)[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wrapped.extra_token_output(images), official[:, -1], rtol=1e-5, atol=1e-5)
    # The variants compute something else: the test can tell them apart.
    for variant in ({"init": "patch_mean"}, {"value": "per_unit"}):
        other = apply_test_time_registers(model, neurons, **variant).forward_features(images)["x_prenorm"]
        assert (other - official[:, :-1]).abs().max() > 1e-3, variant


def test_one_value_per_block_as_the_official_sign_max():
    # The two-unit example: maxima 8 and 3 over the tokens.
    hidden = torch.tensor([[[8.0, 1.0], [0.5, 3.0], [-2.0, 0.0]]])  # 1 image, 3 tokens, 2 units
    signs = torch.tensor([1.0, 1.0])
    assert register_values(hidden, signs).tolist() == [[8.0, 8.0]]
    assert register_values(hidden, signs, "per_unit").tolist() == [[8.0, 3.0]]
    assert official_sign_max(hidden[0]) == 8.0
    negative = torch.tensor([[[8.0, 1.0], [0.5, -9.0]]])
    assert register_values(negative, signs).tolist() == [[-9.0, -9.0]] and official_sign_max(negative[0]) == -9.0
    tie = torch.tensor([[[4.0], [-4.0]]])  # equal magnitudes: the official takes the minimum
    assert register_values(tie, signs[:1]).tolist() == [[-4.0]] and official_sign_max(tie[0]) == -4.0
    # per image: a batch of two gives each image its own value (the official edits image 0 only)
    batch = torch.cat([hidden, -2 * hidden])
    assert register_values(batch, signs).tolist() == [[8.0, 8.0], [-16.0, -16.0]]


# Restated from shared/algorithms.py `find_register_neurons` (commit 248dbaa0) with the notebook's
# apply_sparsity_filter=True (register_neurons.ipynb) and its selection of the top_k neurons of layers
# <= highest_layer: per image, outliers are the tokens (class token included) whose norm at the detection layer
# is above the threshold; a unit's score is its mean |activation| there, zeroed unless the unit is below 0.5 on
# at least half of the tokens; scores are averaged over the images with outliers.
def official_scores(model, images, detect, threshold, hidden_module):
    depth = len(model.blocks)
    scores, counted = [], 0
    for image in images:
        acts, outputs = {}, {}
        handles = [hidden_module(model.blocks[i]).register_forward_pre_hook(
            lambda m, args, i=i, acts=acts: acts.__setitem__(i, args[0][0])) for i in range(depth)]
        handles.append(model.blocks[detect].register_forward_hook(
            lambda m, a, out, outputs=outputs: outputs.__setitem__(0, out[0])))
        model.get_intermediate_layers(image[None], n=1)
        for handle in handles:
            handle.remove()
        norms = outputs[0].norm(dim=1)
        locations = torch.where(norms > threshold)[0]
        if len(locations) == 0:
            continue
        per_layer = []
        for i in range(depth):
            act = acts[i]
            sparse = torch.sum(act < 0.5, dim=0) >= 0.5 * act.shape[0]
            per_layer.append(act[locations].abs().mean(dim=0) * sparse.float())
        scores.append(torch.stack(per_layer))
        counted += 1
    return torch.stack(scores).mean(dim=0), counted


@torch.no_grad()
def test_reference_selection_is_the_official_scoring(defective):
    images = dm.sample_images(5, 224, seed=2)
    (grids,) = patch_token_grids(defective, images, blocks=[6])
    threshold = float(grids.norm(dim=-1).flatten().quantile(0.97))
    fitted = fit_register_neurons(defective, images.split(2), detection_block=-2, highest_block=4, top_k=12,
                                  threshold=threshold)
    scores, counted = official_scores(defective, images, 6, threshold, lambda block: block.mlp.w3)
    assert counted == fitted.fit["images_with_outliers"] >= 3
    values, order = scores[:5].flatten().sort(descending=True)
    width = scores.shape[1]
    assert [(n.block, n.unit) for n in fitted.neurons] == [divmod(int(i), width) for i in order[:12]]
    torch.testing.assert_close(torch.tensor([n.score for n in fitted.neurons], dtype=torch.float64), values[:12].double(),
                               rtol=1e-5, atol=1e-6)
    assert fitted.settings["selection"] == "reference" and deviations(fitted.settings) == []


def test_deviations_name_every_variant():
    assert deviations({"selection": "reference", "max_images": 100, "resolution": 224}) == []
    found = deviations({"selection": "robust_z", "max_images": 300, "resolution": 518}, init="patch_mean",
                       value="per_unit")
    assert [d.split(":")[0].split(" ")[1] for d in found[:3]] == ["init=patch_mean", "value=per_unit",
                                                                   "selection=robust_z"]
    assert found[3:] == ["ttr fit max_images=300 (reference: 100)", "ttr fit resolution=518 (reference: 224)"]


def test_the_remedy_runs_the_reference_by_default_and_records_each_variant(tmp_path, defective, fitted):
    from benchmarks.core import backbones as B
    from benchmarks.core.job import run_deviations

    path = tmp_path / "neurons.json"
    save_neurons(fitted, path)  # fitted with selection robust_z
    default = B.load(B.parse_backbone_spec(f"{dm.PRESET_NAME}+ttr:{path}"))
    variant = B.load(B.parse_backbone_spec(f"{dm.PRESET_NAME}+ttr:neurons={path},init=patch_mean,value=per_unit"))
    assert (default.init, default.value, variant.init, variant.value) == ("zeros", "layer_max", "patch_mean",
                                                                         "per_unit")
    assert default.remedy_deviations == deviations(fitted.settings)
    assert [d.split(":")[0] for d in variant.remedy_deviations] == ["ttr init=patch_mean", "ttr value=per_unit",
                                                                    "ttr selection=robust_z"]
    assert default.weights_sha256 != variant.weights_sha256  # other work: a record is never reused across them
    record = run_deviations({}, {"deviations": ["task switch"]}, torch.device("cpu"), None,
                            variant.remedy_deviations)
    assert record["deviations"] == [*variant.remedy_deviations, "task switch"]
    with pytest.raises(ValueError, match="value 'max': use one of layer_max, per_unit"):
        B.parse_backbone_spec(f"{dm.PRESET_NAME}+ttr:{path},value=max")


def test_the_reference_images_are_dinov2s_eval_transform(tmp_path):
    # make_classification_eval_transform (DINOv2, used by the official dinov2_state.preprocess): Resize(256) bicubic
    # then CenterCrop(224). torchvision's rules (transforms.functional): the short side becomes 256 and the long one
    # int(256 * long / short); the crop starts at int(round((size - 224) / 2.0)) on each axis.
    import numpy as np
    from PIL import Image

    from sinder.utils.images import load_image, to_normalized_tensor

    rng = np.random.default_rng(0)
    path = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 255, (300, 437, 3), dtype=np.uint8)).save(path)  # H 300, W 437
    width = int(256 * 437 / 300)  # 372
    resized = Image.open(path).convert("RGB").resize((width, 256), Image.Resampling.BICUBIC)
    left, top = int(round((width - 224) / 2.0)), int(round((256 - 224) / 2.0))
    expected = to_normalized_tensor(resized.crop((left, top, left + 224, top + 224)))
    torch.testing.assert_close(load_image(path, 224, 14, resize=256), expected, rtol=0, atol=0)
    assert not torch.allclose(load_image(path, 224, 14), expected)  # resize 224 then crop: another image
    with pytest.raises(ValueError, match="resize 200 is smaller than the crop 224"):
        load_image(path, 224, 14, resize=200)
