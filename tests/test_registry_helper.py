"""The one registry helper (benchmarks.core.registry_helper) and what registers through it: tasks, remedies
(asked, not named, by core) and datasets (one entry each: spec, loader, synthetic twin)."""

import sys
from pathlib import Path

import pytest
import torch

from benchmarks.core import backbones as B
from benchmarks.core import remedy as R
from benchmarks.core.registry_helper import Registry


class Alpha:
    name = "alpha"


class Beta:
    name = "beta"


def test_registry_registers_gets_and_names_the_known_entries_when_a_name_is_unknown():
    calls = []
    reg = Registry("widget", discover=lambda: calls.append(1), hint=lambda: " (see widgets/)")
    assert reg.register(Alpha) is Alpha  # a decorator hands the class back
    reg.register(name="b")(Beta)
    assert calls == [] and isinstance(reg.get("alpha"), Alpha) and calls == [1]  # discovered once, when asked
    assert reg.names() == ["alpha", "b"] and calls == [1]
    with pytest.raises(KeyError, match=r"unknown widget 'gamma'; widgets: alpha, b \(see widgets/\)"):
        reg.get("gamma")
    reg.register(Alpha)  # the same class again (its module imported twice) is no error
    with pytest.raises(ValueError, match="widget name 'alpha' registered twice \\(Alpha, Beta\\)"):
        reg.register(name="alpha")(Beta)
    with pytest.raises(ValueError, match="has no name"):
        reg.register(type("Nameless", (), {"name": ""}))


def test_registry_order_error_type_and_view():
    table = {}
    reg = Registry("thing", table=lambda: table, sort=lambda item: -item.rank, plural="known things",
                   error=LookupError, same=lambda old, new: old.rank == new.rank)  # fmt: skip
    for name, rank in (("low", 1), ("high", 3), ("mid", 2)):
        reg.register(type("T", (), {"name": name, "rank": rank})())
    assert reg.names() == ["high", "mid", "low"]  # by the key, not alphabetically
    view = reg.view(lambda item: item.rank)
    assert list(view) == ["high", "mid", "low"] and view["mid"] == 2 and "low" in view and len(view) == 3
    reg.register(type("T", (), {"name": "mid", "rank": 2})())  # `same` says it is the same entry
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(type("T", (), {"name": "mid", "rank": 5})())
    with pytest.raises(LookupError, match="unknown thing 'x'; known things: high, mid, low"):
        reg.get("x")


# --------------------------------------------------------------------------------------------- remedies
class _Twice(R.Remedy):
    """A remedy that needs no benchmark code: its smoke variant's ARGS are made on demand."""

    name = "twice"
    args_help = "factor=F"

    def parse_args(self, text):
        return R.key_value_args(self.name, text, {"factor": float}, positional="factor")

    def smoke_args(self, base, cache_dir, seed=0, log=print):
        made = Path(cache_dir) / f"{base.label}-seed{seed}.txt"
        made.parent.mkdir(parents=True, exist_ok=True)
        made.write_text("made once")
        log(f"made {made.name}")
        return f"factor={seed + 2}"


class _Swap(R.Remedy):
    name = "swap"
    replaces_weights = True  # other weights: the base's own file need not exist

    def problem(self, base, params):
        return None


@pytest.fixture
def extra_remedies(monkeypatch):
    R.discover()  # before the copy: the registered remedies must be in it
    monkeypatch.setattr(R, "_REMEDIES", dict(R._REMEDIES))
    R.register_remedy(_Twice)
    R.register_remedy(_Swap)


def test_core_asks_each_remedy_for_its_smoke_variant(extra_remedies, tmp_path):
    assert R.smoke_remedy_names() == ["clamp", "ttr", "twice"]
    base = B.parse_backbone_spec("dinov2_tiny_defective")
    lines = []
    (spec,) = B.smoke_remedies(base, ["twice"], tmp_path, seed=3, log=lines.append)
    assert spec.text == "dinov2_tiny_defective+twice=dinov2_tiny_defective+twice:factor=5"
    assert (spec.label, spec.remedy, spec.remedy_params) == ("dinov2_tiny_defective+twice", "twice", {"factor": 5.0})
    assert lines == ["made dinov2_tiny_defective-seed3.txt"]
    (clamp,) = B.smoke_remedies(base, ["clamp"], tmp_path)
    assert clamp.remedy_params == {"gamma": 5.0}  # the smoke profile's gamma, as before
    with pytest.raises(ValueError, match="remedy swap has no smoke variant; remedies with one: clamp, ttr, twice"):
        B.smoke_remedies(base, ["swap"], tmp_path)


def test_smoke_remedies_of_a_weights_file_apply_to_that_file_not_to_the_preset(tmp_path):
    """A NAME:WEIGHTS base (the stand-in's oracle in benchmarks/perf/standin_effects.py) once had its smoke
    remedies applied to NAME's preset weights: the clamp row silently measured another model."""
    from safetensors.torch import save_file

    from sinder.models.weights import load_backbone
    from sinder.remedies.clamp import clamp_singular_values

    preset = load_backbone("dinov2_tiny_defective")
    state = {k: v.clone() for k, v in preset.state_dict().items()}
    state["blocks.0.mlp.w3.weight"] *= 0.5  # other weights, same architecture
    weights = tmp_path / "mine.safetensors"
    save_file(state, str(weights))
    base = B.parse_backbone_spec(f"mine=dinov2_tiny_defective:{weights}")
    (clamp,) = B.smoke_remedies(base, ["clamp"], tmp_path)
    assert (clamp.name, clamp.weights, clamp.label) == ("dinov2_tiny_defective", str(weights), "mine+clamp")
    model = B.load(clamp)
    expected, _ = clamp_singular_values(load_backbone("dinov2_tiny_defective", weights=str(weights)), 5.0)
    got = model.state_dict()
    assert torch.equal(got["blocks.0.mlp.w3.weight"], expected["blocks.0.mlp.w3.weight"])
    assert not torch.equal(got["blocks.0.mlp.w3.weight"], clamp_singular_values(preset, 5.0)[0]["blocks.0.mlp.w3.weight"])


def test_the_preflight_checks_the_base_weights_unless_the_remedy_replaces_them(extra_remedies, tmp_path):
    missing = tmp_path / "absent.safetensors"
    assert "does not exist" in B.backbone_problem(B.parse_backbone_spec(f"dinov2_tiny:{missing}+twice:2"))
    assert B.backbone_problem(B.parse_backbone_spec(f"dinov2_tiny:{missing}+swap")) is None
    assert [n for n in R.list_remedies() if R.get_remedy(n).replaces_weights] == ["registers", "sinder", "swap"]


def test_the_old_remedy_module_path_still_imports():
    from benchmarks.remedies import base

    assert base.Remedy is R.Remedy and base.get_remedy is R.get_remedy and base.REPAIR_SECONDS_KEY == "repair_seconds"


# --------------------------------------------------------------------------------------------- datasets
TWIN = '''
DEFAULTS = {"n_train": 2, "n_val": 1, "size": (16, 16)}


def write(w, seed, n_train, n_val, size):
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            w.write(f"{split}/{i}.txt", f"{seed} {size[0]}x{size[1]}".encode())
    return {"train": [None] * n_train, "val": [None] * n_val}
'''


def test_a_dataset_is_one_entry_that_every_reader_finds(tmp_path, monkeypatch, capsys):
    from benchmarks.cli import main
    from benchmarks.data import DATASETS, DatasetEntry, DatasetSpec, get_entry, open_dataset, register_dataset
    from benchmarks.data import specs as S
    from benchmarks.data.base import LayoutDataset
    from benchmarks.data.errors import MissingPathError
    from benchmarks.data.synth import defaults, write_synthetic

    assert list(DATASETS) == ["imagenet", "ade20k", "voc2012", "nyud", "cityscapes", "potsdam"]
    import benchmarks.data.ade20k as ade20k
    import benchmarks.data.synth.ade20k as ade20k_twin

    entry = get_entry("ade20k")
    assert DATASETS["ade20k"] is ade20k.SPEC and entry.loader is ade20k.ADE20k and entry.twin_module() is ade20k_twin

    class Notes(LayoutDataset):
        def __init__(self, root, split="train", transform=None):
            folder = Path(root) / split
            if not folder.is_dir():
                raise MissingPathError("notes", folder, "split folder does not exist")
            self.files = sorted(folder.glob("*.txt"))
            super().__init__(Path(root), split, transform)

        def __len__(self):
            return len(self.files)

        def load(self, index):
            return self.files[index].read_text()

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "notes_twin.py").write_text(TWIN)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.delitem(sys.modules, "notes_twin", raising=False)
    S.REGISTRY.discover()  # before the copy: the six datasets must be in it
    monkeypatch.setattr(S, "_ENTRIES", dict(S._ENTRIES))
    spec = DatasetSpec(name="notes", description="text notes", task="classification", n_classes=None,
                       ignore_index=None, splits=("train", "val"), root_name="notes", inner="",
                       layout="{train,val}/*.txt", url="https://example.org/notes")  # fmt: skip
    Notes.spec = spec
    register_dataset(DatasetEntry(spec, loader=Notes, twin="notes_twin"))
    with pytest.raises(ValueError, match="dataset name 'imagenet' registered twice"):
        register_dataset(DatasetEntry(spec.__class__(**{**vars(spec), "name": "imagenet"}), Notes, "notes_twin"))

    assert list(DATASETS)[-1] == "notes" and DATASETS["notes"] is spec
    assert defaults("notes") == {"n_train": 2, "n_val": 1, "size": (16, 16)}
    write_synthetic("notes", tmp_path / "twin", seed=7, n_train=3)
    data = open_dataset("notes", tmp_path / "twin", "train")
    assert len(data) == 3 and data[0] == "7 16x16"
    assert main(["data", "check", "--dataset", "notes", "--root", str(tmp_path / "twin")]) == 0
    assert "notes train: 3 samples ok" in capsys.readouterr().out
    assert main(["data", "synth", "--dataset", "notes", "--out", str(tmp_path / "cli"), "--seed", "1"]) == 0
    assert (tmp_path / "cli" / "val" / "0.txt").read_text() == "1 16x16"
    assert main(["ls", "datasets"]) == 0
    assert any(line.split() == ["notes", "text", "notes"] for line in capsys.readouterr().out.splitlines())


def test_an_unknown_name_says_which_modules_failed_to_import():
    from benchmarks.core.registry_helper import Registry, failed_imports_hint

    errors: dict[str, str] = {}
    registry = Registry("widget", hint=failed_imports_hint("widget", errors))
    with pytest.raises(KeyError) as plain:
        registry.get("nope")
    assert "failed to import" not in str(plain.value)
    errors["pkg.widgets"] = "ModuleNotFoundError: No module named 'faiss'"
    with pytest.raises(KeyError, match=r"widget modules that failed to import: .*pkg\.widgets.*faiss"):
        registry.get("nope")
