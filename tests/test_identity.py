"""The typed role and run identity: one serialisation, byte-identical keys, never parsed back from text."""

import re
from pathlib import Path

import pytest

from benchmarks.core import results as R
from benchmarks.core.identity import BackboneIdentity, Role, RunIdentity
from sinder.models.roles import is_register_release, official_release_of
from sinder.models.weights import role_key

ROOT = Path(__file__).resolve().parents[1]
REPAIR = {"kind": "repair", "remedy": "sinder", "base_sha256": "ab" * 32, "config": {"mu": 4.0},
          "config_sha256": "cd" * 32}  # fmt: skip
TTR = {"kind": "remedy", "remedy": "ttr", "base_sha256": "ef" * 32, "config": {"n": 3}, "config_sha256": "01" * 32}
# (role dict, its key, RunIdentity.key, key without seed) as the code before the typed role computed them: resume,
# record file names, claims and work folders depend on these staying byte for byte.
GOLDEN = [
    (None, "other", "03e1f36859a1bd94c007", "61e39eaa5a23e050f626"),
    ({"kind": "other"}, "other", "03e1f36859a1bd94c007", "61e39eaa5a23e050f626"),
    ({"kind": "official", "name": "dinov2_vitg14"}, "official:dinov2_vitg14", "588ffa47cc7d384773e8",
     "da0d820446208130dc80"),
    ({"kind": "register", "name": "dinov2_vitg14_reg"}, "register:dinov2_vitg14_reg", "398562e52890439eef57",
     "8f79bb0c66beabec04cd"),
    ({"kind": "constructed", "name": "dinov2_tiny_defective"}, "constructed:dinov2_tiny_defective",
     "6a7f327bd09cfa03ca5f", "155f4e17ddd133190233"),
    (REPAIR, "repair:sinder:cdcdcdcdcdcd:abababababab", "20ce6228311bbfeba3e7", "87778842973aa0400da0"),
    (TTR, "remedy:ttr:010101010101:efefefefefef", "56df13203b981f229c45", "b4d653d15584895ea3fa"),
]  # fmt: skip


def _identity(role):
    return RunIdentity.of(backbone_sha256="9a" * 32, role=role, task="imagenet_knn", task_version="2",
                          config={"T": 0.07, "ks": [10, 20]}, seed=3, profile="smoke")  # fmt: skip


@pytest.mark.parametrize("role, key, run_key, seedless_key", GOLDEN)
def test_keys_are_byte_identical_to_the_untyped_ones(role, key, run_key, seedless_key):
    ident = _identity(role)
    assert isinstance(ident.role, Role) and ident.role.key == key == role_key(role)
    assert (ident.key, ident.without_seed().key) == (run_key, seedless_key)
    stored = ident.as_dict()
    assert stored["role"] == key and stored["key"] == run_key  # a record's `identity`: the role by its key
    assert Role.from_dict(role).as_dict() == (role or {"kind": "other"})  # the dict form round-trips


def test_a_record_is_read_back_through_its_role_dict(tmp_path):
    ident = _identity(REPAIR)
    rec = R.make_record(task="imagenet_knn", profile="smoke", backbone={"label": "dinov2_vitg14", "weights_sha256":
                        "9a" * 32, "role": REPAIR}, metrics={"top1": 1.0}, metric_directions={"top1": "higher"},
                        hparams={}, config={"T": 0.07, "ks": [10, 20]}, seed=3, wall_time_s=1.0,
                        device={"type": "cpu"}, identity=ident)  # fmt: skip
    back = RunIdentity.from_record(rec)
    assert back == ident and back.key == ident.key == rec["identity"]["key"]
    assert (back.role.kind, back.role.remedy, back.role.base_sha256) == ("repair", "sinder", "ab" * 32)
    assert back.role.config == {"mu": 4.0} and back.role.is_sinder_repair and back.role.is_remedied
    # A record without a stored identity (older records) gives the same identity from its fields.
    assert RunIdentity.from_record({k: v for k, v in rec.items() if k != "identity"}) == ident
    # The identity's role text is a name written from the dict, not a source: editing it changes nothing.
    rec["identity"]["role"] = "official:dinov2_vitg14"
    assert RunIdentity.from_record(rec).role == Role.from_dict(REPAIR)


def test_roles_are_typed_and_equal_by_their_key():
    sinder = Role.remedied("repair", "sinder", {"mu": 4.0}, "ab" * 32)
    assert sinder == Role.from_dict(sinder.as_dict()) and hash(sinder) == hash(Role.from_dict(sinder.as_dict()))
    assert sinder != Role.remedied("repair", "sinder", {"mu": 3.0}, "ab" * 32)  # another config is other work
    assert sinder != Role.remedied("remedy", "sinder", {"mu": 4.0}, "ab" * 32)
    with pytest.raises(ValueError, match="repair or remedy"):
        Role.remedied("official", "sinder", {}, "ab" * 32)
    with pytest.raises(TypeError, match="never parsed"):
        Role.from_dict("official:dinov2_vitg14")
    with pytest.raises(TypeError, match="never parsed"):
        RunIdentity.of(backbone_sha256="9a" * 32, role="official:dinov2_vitg14", task="t", task_version="1",
                       config={}, seed=0, profile="smoke")  # fmt: skip
    backbone = BackboneIdentity("9a" * 32, Role.release("dinov2_vitg14_reg"))
    assert backbone.short == "register:dinov2_vitg14_reg@9a9a9a9a9a9a"
    # The text reports and the gate sort by: the same as when the role was held as its key.
    assert repr(backbone) == f"BackboneIdentity(sha256='{'9a' * 32}', role='register:dinov2_vitg14_reg')"


def test_register_releases_are_decided_by_one_function():
    assert is_register_release("dinov2_vitg14_reg") and not is_register_release("dinov2_vitg14")
    assert Role.release("dinov2_vitg14_reg").kind == "register" and Role.release("dinov2_vitg14").kind == "official"
    assert official_release_of("dinov2_vits14_reg") == "dinov2_vits14" == official_release_of("dinov2_vits14")
    assert Role.release("dinov2_vitg14_reg").official_release == Role.release("dinov2_vitg14")
    assert Role.release("dinov2_vitg14").official_release is None


def _code_outside_the_role_home():
    home = ROOT / "sinder" / "models" / "roles.py"
    for folder in ("benchmarks", "sinder"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != home:
                yield path.relative_to(ROOT).as_posix(), path.read_text()


# Reading a role out of its key (the text form), or deciding from the `_reg` suffix, outside sinder/models/roles.py.
PARSES_A_ROLE = re.compile(r"role\w*(\.\w+|\[[^]]*\])*\.(partition|rpartition|split|rsplit|startswith|endswith)\(")
KEY_TEXT = re.compile(r"[\"'](official|register|repair|remedy):(?!\s)")  # a key's text, not a message's "repair: ..."
REG_SUFFIX = re.compile(r"(endswith|removesuffix)\(\s*[\"']_reg[\"']")
# The register remedy still names its preset by the suffix; it moves with the remedy interface (another change).
REG_SUFFIX_PENDING: set[str] = set()


def test_no_module_outside_the_role_home_parses_a_role_key():
    for pattern in (PARSES_A_ROLE, KEY_TEXT, REG_SUFFIX):  # each catches what the code before the typed role did
        assert pattern.search({PARSES_A_ROLE: 'kind, _, rest = role.partition(":")',
                               KEY_TEXT: "official = f\"official:{name}\"",
                               REG_SUFFIX: "name.removesuffix('_reg')"}[pattern])  # fmt: skip
    found = []
    for name, text in _code_outside_the_role_home():
        for number, line in enumerate(text.splitlines(), 1):
            if PARSES_A_ROLE.search(line) or KEY_TEXT.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
            if REG_SUFFIX.search(line) and name not in REG_SUFFIX_PENDING:
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "read the typed Role's fields (sinder.models.roles) instead:\n" + "\n".join(found)
