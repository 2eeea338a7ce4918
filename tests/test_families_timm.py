"""timm checkpoints (a folder as timm's ``save_pretrained`` writes it: ``config.json`` with ``architecture`` +
``model_args`` + ``pretrained_cfg``, and ``model.safetensors``) of the CLIP, SigLIP, DeiT-III and DINOv2 ViTs:
loaded with ``sinder.load_backbone``, every block's patch tokens must match timm's own blocks (forward hooks on
``model.blocks[i]``, prefix tokens dropped), and the pooled feature timm's ``forward_head(pre_logits=True)``.
timm's DINOv3 (``Eva`` with RoPE) is checked the same way, with ``global_pool='token'`` (upstream DINOv3's pooling).
Average-pooled ViTs (``global_pool='avg'``, with ``fc_norm`` and with ``fc_norm=False``) also match timm's dense
``forward_features`` output and, through the benchmarks' ``pooled_layers`` and under test-time registers, the
pooled feature.

timm is a test-only reference (``tests/family_libs.py`` says how it is found, and why not in the dev extras).
"""

from __future__ import annotations

import pytest
import torch
from family_libs import import_reference
from parity import assert_blocks_match

import sinder
from sinder.models.backbone import describe

timm = import_reference("timm")
from timm.models._hub import save_for_hf  # noqa: E402

SMALL = {"embed_dim": 64, "depth": 3, "num_heads": 4, "img_size": 32, "patch_size": 8}
# architecture -> (family, prefix tokens, pooling, activation, extra constructor arguments)
CASES = {
    "vit_base_patch16_clip_quickgelu_224": ("clip", 1, "cls", "quick_gelu", {}),
    "vit_base_patch16_clip_224": ("clip", 1, "cls", "gelu", {}),
    "vit_base_patch16_siglip_224": ("siglip", 0, "attention", "gelu", {}),
    "deit3_base_patch16_224": ("deit3", 1, "cls", "gelu", {}),
    "vit_small_patch14_reg4_dinov2": (
        "dinov2",
        5,
        "cls",
        "gelu",
        {"embed_dim": 384, "num_heads": 6, "img_size": 28, "patch_size": 14},
    ),
    # timm's DINOv3 (Eva, RoPE): plain MLP without q/k/v bias, with q/v biases, and SwiGLU; class-token pooling
    "vit_small_patch16_dinov3": ("dinov3", 5, "cls", "gelu", {"global_pool": "token"}),
    "vit_small_patch16_dinov3_qkvb": ("dinov3", 5, "cls", "gelu", {"global_pool": "token"}),
    "vit_huge_plus_patch16_dinov3": ("dinov3", 5, "cls", "gelu", {"global_pool": "token"}),
    # average-pooled: the gap def (no class token, fc_norm=False, LayerScale), and a plain ViT made with
    # global_pool='avg' (fc_norm by timm's default: norm an Identity) with a class token and two registers
    "vit_medium_patch16_gap_240": ("vit", 0, "avg", "gelu", {}),
    "vit_small_patch16_224": ("vit", 3, "avg", "gelu", {"global_pool": "avg", "reg_tokens": 2}),
    "vit_base_patch16_clip_224.avg": ("clip", 1, "avg", "gelu", {"global_pool": "avg"}),
}
AVG_CASES = [a for a, case in CASES.items() if case[2] == "avg"]


def _timm_folder(tmp_path_factory, architecture: str):
    torch.manual_seed(0)
    kwargs = {**SMALL, **CASES[architecture][4], "dynamic_img_size": True}
    model = timm.create_model(architecture.split(".")[0], pretrained=False, **kwargs).eval()
    with (
        torch.no_grad()
    ):  # non-trivial norms, biases, layer scales and tokens so that a mapping mistake shows
        for name, p in model.named_parameters():
            if any(
                w in name for w in ("norm", "bias", "gamma", "token", "latent", "pos_embed")
            ):  # gamma_1: Eva
                p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp(architecture)
    save_for_hf(model, folder, safe_serialization=True)
    return folder, model


@pytest.fixture(scope="module", params=list(CASES))
def timm_case(request, tmp_path_factory):
    return request.param, *_timm_folder(tmp_path_factory, request.param)


def _timm_blocks(model, x):
    outputs = []
    # cloned: timm's Eva blocks update their input in place afterwards
    hooks = [
        block.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone())) for block in model.blocks
    ]
    try:
        with torch.no_grad():
            pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, pooled


def test_timm_per_block_parity(timm_case):
    architecture, folder, reference = timm_case
    family, prefix, pooling, act, extra = CASES[architecture]
    ours = sinder.load_backbone(str(folder))
    d = describe(ours)
    assert (d.family, d.num_prefix_tokens, d.pooling) == (family, prefix, pooling)
    assert ours.config.get("act_layer", "gelu") == act
    patch = extra.get("patch_size", SMALL["patch_size"])
    for rows, cols in ((4, 4) if family != "dinov2" else (2, 2), (3, 5)):  # native grid, and one that resizes
        x = torch.randn(2, 3, rows * patch, cols * patch, generator=torch.Generator().manual_seed(1))
        theirs, pooled = _timm_blocks(reference, x)
        with torch.no_grad():
            mine = ours.get_intermediate_layers(x, n=3, norm=False)
            features = ours.forward_features(x)
        assert len(mine) == 3 and mine[0].shape == (2, rows * cols, ours.embed_dim)
        assert_blocks_match(mine, theirs, prefix, label=architecture)
        assert (features["x_norm_clstoken"] - pooled).abs().max().item() <= 1e-5


def test_timm_source_format_is_a_timm_folder(tmp_path_factory, tmp_path):
    # the round trip through timm itself: tests/test_source_format_libs.py
    from sinder.models.formats import check_save_format

    folder, _ = _timm_folder(tmp_path_factory, "deit3_base_patch16_224")
    ours = sinder.load_backbone(str(folder))
    assert ours.checkpoint_format.kind == "timm" and ours.checkpoint_format.path == str(folder)
    assert check_save_format("source", ours.checkpoint_format, tmp_path / "out") == "timm"
    with pytest.raises(ValueError, match="the source format of this timm checkpoint is a folder"):
        check_save_format("source", ours.checkpoint_format, tmp_path / "out.safetensors")


def test_an_unsupported_timm_architecture_names_the_supported_ones(tmp_path):
    import json

    from sinder.models.formats import CheckpointError
    from sinder.models.state_io import save_state_dict

    folder = tmp_path / "eva"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architecture": "eva02_base_patch14_224", "model_args": {}})
    )
    save_state_dict({"cls_token": torch.zeros(1, 1, 64)}, folder / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"timm architecture 'eva02_base_patch14_224' is not supported; "
        r"supported: vit_\*_clip_\*",
    ):
        sinder.load_backbone(str(folder))


@pytest.mark.parametrize("architecture", AVG_CASES)
def test_timm_average_pool_matches_dense_outputs_and_pooled_feature(tmp_path_factory, architecture):
    from benchmarks.core.preprocessing import pooled_layers, preprocessing_of
    from sinder.remedies.ttr import RegisterNeuron, apply_test_time_registers

    folder, reference = _timm_folder(tmp_path_factory, architecture)
    prefix = CASES[architecture][1]
    ours = sinder.load_backbone(str(folder))
    fc_norm = not isinstance(reference.fc_norm, torch.nn.Identity)
    assert ours.config["fc_norm"] == fc_norm and hasattr(ours, "fc_norm") == fc_norm
    assert isinstance(ours.norm, torch.nn.Identity) == isinstance(reference.norm, torch.nn.Identity) == fc_norm
    assert preprocessing_of(ours).pooled_feature.startswith("mean of the patch tokens")
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = reference.forward_features(x)
        pooled = reference.forward_head(dense, pre_logits=True)
        features = ours.forward_features(x)
        ((patches, probe_pooled),) = pooled_layers(ours, x, n=1, norm=True)
        last = ours.get_intermediate_layers(x, n=1, norm=True)[0]
    # timm's forward_features (norm an Identity with fc_norm): the dense outputs, prefix tokens dropped
    assert (features["x_norm_patchtokens"] - dense[:, prefix:]).abs().max().item() <= 1e-5
    assert (last - dense[:, prefix:]).abs().max().item() <= 1e-5 and torch.equal(patches, last)
    assert (features["x_norm_clstoken"] - pooled).abs().max().item() <= 1e-5
    assert (probe_pooled - pooled).abs().max().item() <= 1e-5  # what KNN and the linear probe read
    # an independent restatement: the mean over the patch tokens only (prefix tokens would shift it)
    mean = dense[:, prefix:].mean(dim=1)
    expected = reference.fc_norm(mean) if fc_norm else mean
    assert (features["x_norm_clstoken"] - expected).abs().max().item() <= 1e-5
    if prefix:
        assert (dense.mean(dim=1) - dense[:, prefix:].mean(dim=1)).abs().max().item() > 1e-3
    # test-time registers: the extra token never enters the mean (it carries a large activation here)
    ttr = apply_test_time_registers(ours, [RegisterNeuron(block=1, unit=0, score=1.0, sign=1)])
    with torch.no_grad():
        out = ttr.forward_features(x)
        extra = ttr.extra_token_output(x)
        ((_, ttr_pooled),) = pooled_layers(ttr, x, n=1, norm=True)
    mean = out["x_norm_patchtokens"].mean(dim=1)
    assert out["x_norm_patchtokens"].shape == features["x_norm_patchtokens"].shape
    assert torch.allclose(out["x_norm_clstoken"], ours.fc_norm(mean) if fc_norm else mean, atol=1e-6)
    assert torch.allclose(ttr_pooled, out["x_norm_clstoken"], atol=1e-6)
    with_extra = torch.cat((out["x_norm_patchtokens"], ours.norm(extra)[:, None]), dim=1).mean(dim=1)
    assert (with_extra - mean).abs().max().item() > 1e-4  # had it entered the mean, the pooled feature would show


def test_timm_unsupported_global_pool_is_refused_in_one_line(tmp_path_factory):
    import json

    from sinder.models.formats import CheckpointError

    folder, _ = _timm_folder(tmp_path_factory, "vit_small_patch16_224")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"]["global_pool"] = "avgmax"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        sinder.load_backbone(str(folder))
    message = str(err.value)
    assert "\n" not in message
    assert "global_pool 'avgmax' is not supported; supported: 'token', 'map', 'avg'" in message
