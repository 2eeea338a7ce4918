import hashlib

import pytest
import torch
from conftest import load_parity_model

from sinder.models.vit import build_vit
from sinder.models.weights import (
    WeightsError,
    check_weights_file,
    content_sha256,
    file_sha256,
    load_backbone,
    normalize_keys,
    official_url,
    read_state_dict,
    role_key,
    save_state_dict,
    state_dict_sha256,
)


@pytest.fixture
def swiglu_file(tmp_path):
    arch, state, ref = load_parity_model("dinov2_tiny_swiglu")
    path = tmp_path / "tiny.safetensors"
    save_state_dict(state, path)
    return arch, path, ref


def test_load_backbone_from_safetensors_records_content_hash(swiglu_file):
    arch, path, ref = swiglu_file
    model = load_backbone(arch, weights=path)
    assert model.weights_sha256 == content_sha256(read_state_dict(path))
    assert model.weights_role == {"kind": "other"}
    assert not model.training
    with torch.no_grad():
        assert (model(ref["input"]) - ref["x_norm_clstoken"]).abs().max() <= 1e-5


def test_load_backbone_from_pth_and_prefixed_keys(swiglu_file, tmp_path):
    arch, path, ref = swiglu_file
    state = read_state_dict(path)
    pth = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, pth)
    model = load_backbone(arch, weights=pth)
    # The same tensors behind other keys in another format: the same content hash, another file hash.
    assert model.weights_sha256 == load_backbone(arch, weights=path).weights_sha256
    assert file_sha256(pth) != file_sha256(path)
    with torch.no_grad():
        assert (model(ref["input"]) - ref["x_norm_clstoken"]).abs().max() <= 1e-5


class NotATensor:
    """A pickled object that is not a tensor: ``weights_only`` loading must refuse it."""


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"x": NotATensor()}, bad)
    with pytest.raises(WeightsError, match="cannot read weights file"):
        read_state_dict(bad)


def test_chunked_block_keys_are_flattened():
    state = {"blocks.0.0.norm1.weight": torch.ones(1), "blocks.1.3.ls1.gamma": torch.ones(1), "norm.bias": torch.ones(1)}
    assert set(normalize_keys(state)) == {"blocks.0.norm1.weight", "blocks.3.ls1.gamma", "norm.bias"}


def test_wrong_keys_are_listed(swiglu_file, tmp_path):
    arch, path, _ = swiglu_file
    state = read_state_dict(path)
    state.pop("blocks.2.ls1.gamma")
    state["blocks.2.extra.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.safetensors"
    save_state_dict(state, bad)
    with pytest.raises(WeightsError) as err:
        load_backbone(arch, weights=bad)
    msg = str(err.value)
    assert "missing keys (1): blocks.2.ls1.gamma" in msg
    assert "unexpected keys (1): blocks.2.extra.weight" in msg
    # Right keys, wrong architecture: shapes are named.
    with pytest.raises(WeightsError, match=r"wrong shapes .*mlp\.w12\.weight"):
        load_backbone({**arch, "mlp_ratio": 2}, weights=path)


def test_corrupt_file_gets_clear_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(WeightsError, match="broken.safetensors"):
        load_backbone("dinov2_tiny", weights=bad)


def test_missing_official_file_names_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_backbone("dinov2_vitg14_reg")
    msg = str(err.value)
    assert "dinov2_vitg14_reg4_pretrain.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert official_url("dinov2_vitg14_reg") in msg
    assert official_url("dinov2_vitg14_reg").endswith("/dinov2_vitg14/dinov2_vitg14_reg4_pretrain.pth")


def test_hub_cache_is_found(tmp_path, monkeypatch):
    """An official name resolves to $TORCH_HOME/hub/checkpoints/<official file>."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # A small stand-in with the ViT-S release's architecture would take 22M params; patch the preset's size.
    from sinder.models import vit
    small = {**vit.PRESETS["dinov2_vits14"], "embed_dim": 24, "depth": 1, "num_heads": 2, "img_size": 28}
    monkeypatch.setitem(vit.PRESETS, "dinov2_vits14", small)
    model = build_vit("dinov2_vits14", seed=0)
    target = tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    target.parent.mkdir(parents=True)
    torch.save(model.state_dict(), target)
    loaded = load_backbone("dinov2_vits14")
    assert loaded.weights_source == str(target)
    assert torch.equal(loaded.pos_embed, model.pos_embed)


def test_save_is_atomic_and_never_overwrites(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    first = {"a": torch.arange(4.0)}
    sha = save_state_dict(first, path)
    assert sha == file_sha256(path)
    with pytest.raises(FileExistsError, match="--force"):
        save_state_dict({"a": torch.zeros(4)}, path)
    assert torch.equal(read_state_dict(path)["a"], first["a"])
    # A write that dies half way leaves the old file and no temporary behind.
    def dies_half_way(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    from sinder.models import state_io
    monkeypatch.setattr(state_io, "write_safetensors", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict({"a": torch.zeros(4)}, path, force=True)
    monkeypatch.undo()
    assert torch.equal(read_state_dict(path)["a"], first["a"])
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    save_state_dict({"a": torch.ones(4)}, path, force=True)
    assert torch.equal(read_state_dict(path)["a"], torch.ones(4))


def test_constructed_backbones_are_deterministic():
    a = load_backbone("dinov2_tiny_random")
    b = load_backbone("dinov2_tiny_random")
    assert a.weights_sha256 == b.weights_sha256 == state_dict_sha256(a.state_dict())
    c = load_backbone("dinov2_tiny_swiglu_random")
    assert c.weights_sha256 != a.weights_sha256
    assert a.weights_source == "constructed:dinov2_tiny_random"


def test_content_hash_is_an_independent_sha256_of_names_dtypes_shapes_and_bytes():
    state = {"b": torch.arange(3, dtype=torch.int16), "a": torch.tensor([[1.5, -2.0]])}
    digest = hashlib.sha256(b"sinder-tensors-v1\n")
    digest.update(b"a|float32|(1, 2)\n" + torch.tensor([1.5, -2.0]).numpy().tobytes())
    digest.update(b"b|int16|(3,)\n" + torch.arange(3, dtype=torch.int16).numpy().tobytes())
    assert content_sha256(state) == digest.hexdigest()
    assert content_sha256(dict(reversed(state.items()))) == digest.hexdigest()  # key order does not matter
    assert content_sha256({"module." + k: v for k, v in state.items()}) == digest.hexdigest()
    assert content_sha256({**state, "a": torch.tensor([[1.5, -2.0]], dtype=torch.float64)}) != digest.hexdigest()


def test_safetensors_saves_are_byte_identical_and_readable(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = {f"t{i}": torch.randn(3, i + 1) for i in range(6)} | {"z": torch.zeros(0), "h": torch.ones(2).half()}
    meta = {f"key{i}": str(i) for i in range(12)}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_state_dict(state, one, metadata=meta)
    save_state_dict(dict(reversed(state.items())), two, metadata=dict(reversed(meta.items())))
    assert one.read_bytes() == two.read_bytes()
    loaded = load_file(str(one))
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(one), framework="pt") as handle:
        assert handle.metadata() == meta


def test_roles_come_from_metadata_and_official_names(swiglu_file, tmp_path):
    arch, path, _ = swiglu_file
    state = read_state_dict(path)
    repaired = tmp_path / "anything.safetensors"
    save_state_dict(state, repaired, metadata={"sinder_config": '{"mu": 4.0}', "base_sha256": "ab" * 32})
    role = load_backbone(arch, weights=repaired).weights_role
    assert role["kind"] == "repair" and role["remedy"] == "sinder" and role["config"] == {"mu": 4.0}
    assert role_key(role) == f"repair:sinder:{role['config_sha256'][:12]}:{'ab' * 6}"
    assert role_key({"kind": "register", "name": "dinov2_vitg14_reg"}) == "register:dinov2_vitg14_reg"
    assert role_key(None) == "other"


def test_constructed_name_with_weights_needs_no_prior_import(tmp_path, monkeypatch):
    import sys

    model = load_backbone("dinov2_tiny_defective")
    path = tmp_path / "d.safetensors"
    save_state_dict(model.state_dict(), path)
    # As in a fresh process: the module that builds the constructed architecture was never imported.
    monkeypatch.delitem(sys.modules, "sinder.models.defective")
    loaded = load_backbone("dinov2_tiny_defective", weights=path)
    assert loaded.weights_sha256 == model.weights_sha256


def test_check_weights_file_reads_keys_and_shapes_only(swiglu_file, tmp_path):
    arch, path, _ = swiglu_file
    assert check_weights_file(arch, path) is None
    pth = tmp_path / "w.pth"
    torch.save(read_state_dict(path), pth)
    assert check_weights_file(arch, pth) is None
    assert "wrong shapes" in check_weights_file({**arch, "mlp_ratio": 2}, path)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    assert "corrupt.safetensors" in check_weights_file(arch, bad)
