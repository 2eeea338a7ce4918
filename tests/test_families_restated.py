"""timm and OpenCLIP checkpoints against plain re-statements of those libraries' forwards
(``tests/naive_vit_families.py``): these run without timm and open_clip installed (the parity tests against the
libraries themselves are ``test_families_timm.py`` and ``test_families_open_clip.py``).

The checkpoints are random state dicts written by hand in each library's keys, saved as timm writes a folder
(``config.json`` with ``architecture``/``model_args``/``pretrained_cfg`` + ``model.safetensors``) or as an OpenCLIP
state dict file.
"""

from __future__ import annotations

import json

import pytest
import torch
from naive_vit_families import open_clip_forward, timm_forward
from parity import assert_blocks_match

import sinder
from sinder.models.backbone import describe
from sinder.models.state_io import save_state_dict

D, DEPTH, HEADS, PATCH, HIDDEN = 64, 2, 4, 8, 128


def _rand(gen, *shape, scale=0.1, base=0.0):
    return base + scale * torch.randn(*shape, generator=gen)


def _norm(state, gen, name):
    state[f"{name}.weight"], state[f"{name}.bias"] = _rand(gen, D, base=1.0), _rand(gen, D)


def _blocks(state, gen, prefix, names, layer_scale):
    for i in range(DEPTH):
        b = f"{prefix}{i}."
        _norm(state, gen, b + names["norm1"])
        _norm(state, gen, b + names["norm2"])
        for role, (rows, cols) in (
            ("qkv", (3 * D, D)),
            ("proj", (D, D)),
            ("fc1", (HIDDEN, D)),
            ("fc2", (D, HIDDEN)),
        ):
            name, sep = names[role]
            state[f"{b}{name}{sep}weight"] = _rand(gen, rows, cols, scale=cols**-0.5)
            state[f"{b}{name}{sep}bias"] = _rand(gen, rows)
        if layer_scale:
            state[f"{b}{names['ls1']}"], state[f"{b}{names['ls2']}"] = (
                _rand(gen, D, base=0.5),
                _rand(gen, D, base=0.5),
            )


TIMM_NAMES = {"norm1": "norm1", "norm2": "norm2", "qkv": ("attn.qkv", "."), "proj": ("attn.proj", "."),
              "fc1": ("mlp.fc1", "."), "fc2": ("mlp.fc2", "."), "ls1": "ls1.gamma", "ls2": "ls2.gamma"}  # fmt: skip
# architecture -> (family, prefix tokens, activation, eps, no_embed_class, registers)
TIMM_CASES = {
    "vit_base_patch16_clip_quickgelu_224": ("clip", 1, "quick_gelu", 1e-5, False, 0),
    "vit_base_patch16_clip_224": ("clip", 3, "gelu", 1e-5, False, 2),  # registers with positions: folded in
    "vit_base_patch16_siglip_224": ("siglip", 0, "gelu", 1e-6, False, 0),
    "deit3_base_patch16_224": ("deit3", 1, "gelu", 1e-6, True, 0),
    # average-pooled plain timm ViTs (global_pool='avg'): no class token and fc_norm=False (the gap defs), and a
    # class token + 2 registers with fc_norm (timm's default for 'avg': the final norm an Identity)
    "vit_medium_patch16_gap_240": ("vit", 0, "gelu", 1e-6, False, 0),
    "vit_base_patch16_224": ("vit", 3, "gelu", 1e-6, False, 2),
}
AVG_POOLED = {"vit_medium_patch16_gap_240": False, "vit_base_patch16_224": True}  # architecture -> fc_norm


def _timm_state(architecture: str) -> dict[str, torch.Tensor]:
    family, prefix, _, _, no_embed_class, registers = TIMM_CASES[architecture]
    gen = torch.Generator().manual_seed(len(architecture))
    state = {"patch_embed.proj.weight": _rand(gen, D, 3, PATCH, PATCH, scale=0.2)}
    if family != "clip":
        state["patch_embed.proj.bias"] = _rand(gen, D)
    if prefix > registers:
        state["cls_token"] = _rand(gen, 1, 1, D, scale=1.0)
    if family != "siglip":
        state["head.weight"], state["head.bias"] = (
            _rand(gen, 10, D),
            _rand(gen, 10),
        )  # classifier: not the backbone
    if registers:
        state["reg_token"] = _rand(gen, 1, registers, D, scale=1.0)
    state["pos_embed"] = _rand(gen, 1, 16 + (0 if no_embed_class else prefix), D, scale=0.5)
    if family == "clip":
        _norm(state, gen, "norm_pre")
    _blocks(state, gen, "blocks.", TIMM_NAMES, layer_scale=family in ("deit3", "vit"))
    _norm(state, gen, "fc_norm" if AVG_POOLED.get(architecture) else "norm")
    if family == "siglip":
        state["attn_pool.latent"] = _rand(gen, 1, 1, D, scale=1.0)
        for name, rows, cols in (("q", D, D), ("kv", 2 * D, D), ("proj", D, D), ("mlp.fc1", HIDDEN, D),
                                 ("mlp.fc2", D, HIDDEN)):  # fmt: skip
            state[f"attn_pool.{name}.weight"] = _rand(gen, rows, cols, scale=cols**-0.5)
            state[f"attn_pool.{name}.bias"] = _rand(gen, rows)
        _norm(state, gen, "attn_pool.norm")
    return state


def _timm_folder(tmp_path, architecture, state):
    folder = tmp_path / architecture
    folder.mkdir()
    save_state_dict(state, folder / "model.safetensors")
    pool = "map" if TIMM_CASES[architecture][0] == "siglip" else "avg" if architecture in AVG_POOLED else "token"
    config = {"architecture": architecture, "num_classes": 10, "num_features": D, "global_pool": pool,
              "model_args": {"depth": DEPTH, "embed_dim": D, "num_heads": HEADS, "img_size": [32, 32]},
              "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _compare(ours, theirs_blocks, theirs_pooled, mine_x, prefix):
    with torch.no_grad():
        mine = ours.get_intermediate_layers(mine_x, n=DEPTH, norm=False)
        pooled = ours.forward_features(mine_x)["x_norm_clstoken"]
    assert len(mine) == DEPTH
    assert_blocks_match(mine, theirs_blocks, prefix)
    return pooled


@pytest.mark.parametrize("architecture", list(TIMM_CASES))
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_timm_folder_matches_the_restated_forward(tmp_path, architecture, grid):
    family, prefix, act, eps, no_embed_class, registers = TIMM_CASES[architecture]
    state = _timm_state(architecture)
    ours = sinder.load_backbone(str(_timm_folder(tmp_path, architecture, state)))
    d = describe(ours)
    assert (d.family, d.num_prefix_tokens, d.num_register_tokens) == (family, prefix, registers)
    pooling = "attention" if family == "siglip" else "avg" if architecture in AVG_POOLED else "cls"
    assert (d.pooling, ours.config["act_layer"], ours.config["norm_eps"]) == (pooling, act, eps)
    x = torch.randn(2, 3, grid[0] * PATCH, grid[1] * PATCH, generator=torch.Generator().manual_seed(1))
    outs, pooled = timm_forward(state, x, depth=DEPTH, heads=HEADS, eps=eps, act=act, no_embed_class=no_embed_class,
                                pool="avg" if architecture in AVG_POOLED else "token")  # fmt: skip
    mine = _compare(ours, outs, pooled, x, prefix)
    assert (mine.double() - pooled).abs().max().item() <= 1e-5


def test_timm_weights_file_beside_its_config_loads_as_the_folder(tmp_path):
    state = _timm_state("deit3_base_patch16_224")
    folder = _timm_folder(tmp_path, "deit3_base_patch16_224", state)
    by_file, by_folder = (
        sinder.load_backbone(str(folder / "model.safetensors")),
        sinder.load_backbone(str(folder)),
    )
    assert by_file.weights_sha256 == by_folder.weights_sha256 and describe(by_file).family == "deit3"


def test_timm_width_without_heads_is_refused(tmp_path):
    from sinder.models.formats import CheckpointError

    folder = _timm_folder(tmp_path, "deit3_base_patch16_224", _timm_state("deit3_base_patch16_224"))
    config = json.loads((folder / "config.json").read_text())
    del config["model_args"]["num_heads"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"the head count of a 64-wide model is not in config.json's model_args"
    ):
        sinder.load_backbone(str(folder))


OPEN_CLIP_NAMES = {"norm1": "ln_1", "norm2": "ln_2", "qkv": ("attn.in_proj", "_"), "proj": ("attn.out_proj", "."),
                   "fc1": ("mlp.c_fc", "."), "fc2": ("mlp.c_proj", "."), "ls1": "ls_1.gamma", "ls2": "ls_2.gamma"}  # fmt: skip


def _open_clip_state(layer_scale: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    state = {"conv1.weight": _rand(gen, D, 3, PATCH, PATCH, scale=0.2), "class_embedding": _rand(gen, D, scale=1.0),
             "positional_embedding": _rand(gen, 17, D, scale=0.5), "proj": _rand(gen, D, 16)}  # fmt: skip
    _norm(state, gen, "ln_pre")
    _blocks(state, gen, "transformer.resblocks.", OPEN_CLIP_NAMES, layer_scale)
    _norm(state, gen, "ln_post")
    return state


@pytest.mark.parametrize(("name", "act"), [("ViT-T-8-quickgelu.safetensors", "quick_gelu"),
                                           ("ViT-T-8.safetensors", "gelu")])  # fmt: skip
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_open_clip_file_matches_the_restated_forward(tmp_path, name, act, grid):
    tower = _open_clip_state(layer_scale=act == "gelu")
    # a full CLIP state dict: the image tower under visual., the text tower's own resblocks at the top level
    full = {f"visual.{k}": v for k, v in tower.items()}
    full["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3 * 32, 32)
    save_state_dict(full, tmp_path / name)
    ours = sinder.load_backbone(str(tmp_path / name))
    d = describe(ours)
    assert (d.family, d.num_prefix_tokens, d.pooling, ours.config["act_layer"]) == ("clip", 1, "cls", act)
    assert ours.config["num_heads"] == D // 64  # open_clip's head_width 64 without a config saying otherwise
    x = torch.randn(2, 3, grid[0] * PATCH, grid[1] * PATCH, generator=torch.Generator().manual_seed(1))
    outs, embedding = open_clip_forward(tower, x, depth=DEPTH, heads=D // 64, act=act)
    mine = _compare(ours, outs, embedding, x, 1)
    assert (mine.double() @ tower["proj"].double() - embedding).abs().max().item() <= 1e-5


def test_open_clip_config_beside_the_file_overrides_the_name(tmp_path):
    tower = _open_clip_state(layer_scale=False)
    save_state_dict({f"visual.{k}": v for k, v in tower.items()}, tmp_path / "openai.safetensors")
    cfg = {"model_cfg": {"quick_gelu": False, "vision_cfg": {"head_width": 16}}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    ours = sinder.load_backbone(str(tmp_path / "openai.safetensors"))
    assert ours.config["act_layer"] == "gelu" and ours.config["num_heads"] == 4
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    outs, _ = open_clip_forward(tower, x, depth=DEPTH, heads=4, act="gelu")
    _compare(ours, outs, None, x, 1)


def test_timm_clip_weights_without_their_config_say_what_to_pass(tmp_path):
    from sinder.models.formats import CheckpointError

    save_state_dict(_timm_state("vit_base_patch16_clip_224"), tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"holds timm weights of a CLIP, SigLIP or DINOv3 ViT but no timm "
        r"config.json lies beside it: pass the folder",
    ):
        sinder.load_backbone(str(tmp_path / "model.safetensors"))


def test_checkpoint_config_reads_a_timm_folder(tmp_path):
    from sinder.models.weights import checkpoint_config

    folder = _timm_folder(tmp_path, "vit_base_patch16_siglip_224", _timm_state("vit_base_patch16_siglip_224"))
    config = checkpoint_config(folder)
    assert (config["family"], config["class_token"], config["attn_pool"], config["num_heads"]) == (
        "siglip",
        False,
        True,
        HEADS,
    )


@pytest.mark.parametrize("pool", ["avgmax", "max"])
def test_timm_pools_other_than_token_map_avg_are_refused_in_one_line(tmp_path, pool):
    from sinder.models.formats import CheckpointError

    folder = _timm_folder(tmp_path, "vit_base_patch16_224", _timm_state("vit_base_patch16_224"))
    config = json.loads((folder / "config.json").read_text())
    config["global_pool"] = config["model_args"]["global_pool"] = pool
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as err:
        sinder.load_backbone(str(folder))
    assert "\n" not in str(err.value)
    assert f"global_pool {pool!r} is not supported; supported: 'token', 'map', 'avg'" in str(err.value)


def test_timm_fc_norm_with_class_token_pooling_is_refused(tmp_path):
    from sinder.models.formats import CheckpointError

    folder = _timm_folder(tmp_path, "vit_base_patch16_224", _timm_state("vit_base_patch16_224"))  # has fc_norm
    config = json.loads((folder / "config.json").read_text())
    config["global_pool"] = config["model_args"]["global_pool"] = "token"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"global_pool 'token' with fc_norm is not supported"):
        sinder.load_backbone(str(folder))


def test_timm_residual_post_norm_vit_is_refused(tmp_path):
    # vit_*_rpn_* (timm's ResPostBlock) has our key names but norms after attention/MLP: not our block
    from sinder.models.formats import CheckpointError

    state = _timm_state("vit_medium_patch16_gap_240")
    folder = _timm_folder(tmp_path, "vit_medium_patch16_gap_240", state)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "vit_base_patch16_rpn_224"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"timm architecture 'vit_base_patch16_rpn_224' is not supported"):
        sinder.load_backbone(str(folder))
