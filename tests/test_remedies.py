"""Remedies in the backbone spec (registry, parsing, identity, equivalence) and the smoke remedies suite."""

import copy
import json
import re

import pytest
import torch

from benchmarks.core import backbones as B
from benchmarks.core import registry
from benchmarks.core.identity import RunIdentity
from benchmarks.core.remedy import get_remedy, list_remedies
from sinder.models.defective import sample_images
from sinder.models.weights import load_backbone, role_key, save_state_dict
from sinder.remedies.clamp import clamp_singular_values
from sinder.remedies.ttr import apply_neuron_file, fit_register_neurons, save_neurons

BASE = "dinov2_tiny_defective"


def test_registry_has_one_module_per_remedy():
    assert {"sinder", "clamp", "ttr", "registers"} <= set(list_remedies())
    assert get_remedy("clamp").parse_args("gamma=5") == {"gamma": 5.0}
    with pytest.raises(KeyError, match="remedies: clamp, registers, sinder, ttr"):
        get_remedy("nope")


def test_good_specs():
    spec = B.parse_backbone_spec("clamp=dinov2_vitg14+clamp:gamma=5")
    assert (spec.label, spec.name, spec.weights, spec.remedy, spec.remedy_params) == (
        "clamp", "dinov2_vitg14", None, "clamp", {"gamma": 5.0})
    spec = B.parse_backbone_spec("dinov2_vitg14+ttr:runs/neurons.json")
    assert (spec.label, spec.remedy, spec.remedy_params) == ("dinov2_vitg14+ttr", "ttr", {"neurons": "runs/neurons.json"})
    assert B.parse_backbone_spec("dinov2_vitg14+clamp:3").remedy_params == {"gamma": 3.0}
    spec = B.parse_backbone_spec("dinov2_vitg14+registers")
    assert (spec.remedy, spec.remedy_params, spec.base.remedy) == ("registers", {}, None)
    plain = B.parse_backbone_spec("x=dinov2_vitg14:ckpt/a+b.safetensors")  # a '+' inside a path is not a remedy
    assert (plain.weights, plain.remedy) == ("ckpt/a+b.safetensors", None)
    assert spec.as_record("0" * 64)["remedy"]["name"] == "registers"


@pytest.mark.parametrize("text, message", [
    ("dinov2_vitg14+foo:1", "unknown remedy 'foo'; remedies: clamp, registers, sinder, ttr"),
    ("dinov2_vitg14+clamp", "needs the singular value bound: gamma=G"),
    ("dinov2_vitg14+clamp:gamma=x", "gamma='x' is not a float"),
    ("dinov2_vitg14+clamp:gamma=-1", "must be positive"),
    ("dinov2_vitg14+clamp:beta=2", "unknown argument 'beta'; it takes gamma"),
    ("dinov2_vitg14+ttr", "needs a neuron file"),
    ("dinov2_vitg14+sinder", "needs the repaired checkpoint"),
])  # fmt: skip
def test_bad_specs_name_the_problem(text, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        B.parse_backbone_spec(text)
    assert repr(text) in str(err.value)


def test_preflight_rejects_a_bad_remedy_with_exit_2(tmp_path, capsys, neurons_file):
    from benchmarks.cli import main

    args = ["run", "--suite", "defect_census", "--profile", "smoke", "--out", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    assert main(args + ["--backbone", f"{BASE}+clamp:gamma=zero"]) == 2
    assert main(args + ["--backbone", f"{BASE}+ttr:{tmp_path / 'missing.json'}", "--backbone",
                        f"{BASE}+registers", "--backbone", f"dinov2_vits14+ttr:{neurons_file}"]) == 2  # fmt: skip
    err = capsys.readouterr().err + capsys.readouterr().out
    assert "gamma='zero' is not a float" in err
    assert "missing.json does not exist" in err and "has no register release" in err
    assert "not dinov2_vits14's (depth 12, embed_dim 384)" in err
    assert not (tmp_path / "runs" / "defect_census").exists()  # nothing ran


@pytest.fixture(scope="module")
def neurons_file(tmp_path_factory):
    base = load_backbone(BASE)
    path = tmp_path_factory.mktemp("ttr") / "neurons.json"
    save_neurons(fit_register_neurons(base, sample_images(24, size=112, seed=1).split(12), selection="robust_z"), path)
    return path


@pytest.fixture(scope="module")
def loaded(neurons_file):
    """The base and two remedies of it, loaded through their specs (shared: loading takes a second each)."""
    return {name: B.load(B.parse_backbone_spec(text)) for name, text in
            [("base", BASE), ("clamp5", f"{BASE}+clamp:gamma=5"), ("ttr", f"{BASE}+ttr:{neurons_file}")]}  # fmt: skip


def test_clamp_and_ttr_through_the_spec_equal_applying_them_directly(neurons_file, loaded):
    images = sample_images(4, size=112, seed=7)
    base = load_backbone(BASE)
    direct_clamp = copy.deepcopy(base)
    direct_clamp.load_state_dict(clamp_singular_values(base, 5.0)[0])
    via_spec = loaded["clamp5"]
    for a, b in zip(direct_clamp.get_intermediate_layers(images, n=3), via_spec.get_intermediate_layers(images, n=3)):
        assert torch.equal(a, b)
    assert not torch.allclose(base.get_intermediate_layers(images, n=1)[0], via_spec.get_intermediate_layers(images, n=1)[0])

    direct_ttr = apply_neuron_file(base, neurons_file)
    ttr = loaded["ttr"]
    assert ttr.num_extra_tokens == 1 and ttr.remedy_cost["extra_tokens"] == 1
    for a, b in zip(direct_ttr.get_intermediate_layers(images, n=3, return_class_token=True),
                    ttr.get_intermediate_layers(images, n=3, return_class_token=True)):  # fmt: skip
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(base.forward_features(images)["x_norm_patchtokens"],
                              ttr.forward_features(images)["x_norm_patchtokens"])  # fmt: skip


def _identity(model):
    return RunIdentity.of(backbone_sha256=model.weights_sha256, role=model.weights_role, task="defect_census",
                          task_version="1", config={}, seed=0, profile="smoke")  # fmt: skip


def test_the_identity_records_the_remedy_and_its_parameters(neurons_file, loaded, tmp_path):
    base = loaded["base"]
    models = [base, loaded["clamp5"], B.load(B.parse_backbone_spec(f"{BASE}+clamp:gamma=3")), loaded["ttr"]]
    keys = [_identity(m).key for m in models]
    assert len(set(keys)) == len(keys)
    ttr = models[3]
    roles = [role_key(m.weights_role) for m in models]
    assert roles[0] == f"constructed:{BASE}"
    assert roles[1].startswith("repair:clamp:") and roles[1].endswith(base.weights_sha256[:12])
    assert roles[1] != roles[2]
    assert roles[3].startswith("remedy:ttr:") and roles[3].endswith(base.weights_sha256[:12])
    assert ttr.weights_role["config"]["n_neurons"] == len(json.loads(neurons_file.read_text())["neurons"])
    assert ttr.weights_sha256 != base.weights_sha256  # caches keyed by it never serve the base's features

    # Another neuron file (one neuron fewer) is other work.
    data = json.loads(neurons_file.read_text())
    data["neurons"] = data["neurons"][:-1]
    other = tmp_path / "fewer.json"
    other.write_text(json.dumps(data))
    assert _identity(B.load(B.parse_backbone_spec(f"{BASE}+ttr:{other}"))).key != _identity(ttr).key

    # The clamp remedy and a file written by `sinder clamp` (same tensors and gamma) are the same work.
    path = tmp_path / "clamped.safetensors"
    save_state_dict(models[1].state_dict(), path,
                    metadata={"clamp_gamma": "5.0", "source_sha256": base.weights_sha256})  # fmt: skip
    from_file = B.load(B.parse_backbone_spec(f"{BASE}:{path}"))
    assert _identity(from_file) == _identity(models[1])


def test_remedies_suite_smoke_records_each_remedy_and_report_shows_them_beside_the_base(tmp_path, monkeypatch, capsys):
    from remedies_harness import census_by_label, run_cheap_remedies_suite

    from benchmarks.core.report import build_report

    suite = registry.get_suite("remedies")
    assert suite.tasks == ("defect_census", "imagenet_knn", "seg_ade20k_linear", "depth_nyu_linear4")
    assert suite.meta["smoke_remedies"] == ["clamp", "ttr"]
    # The cheap part of the suite: the census and KNN; the SINDER twin's repair is tested elsewhere. On the
    # constructed model, whose census images hold high-norm tokens for every remedy to move (the smoke default,
    # the trained stand-in, has almost none on the ImageNet twin: tests/test_standin.py covers it).
    summary, out = run_cheap_remedies_suite(tmp_path, monkeypatch, BASE, ["defect_census", "imagenet_knn"],
                                            twin=False)  # fmt: skip
    assert summary.exit_code == 0 and len(summary.ran) == 6
    census = census_by_label(out)
    assert set(census) == {BASE, f"{BASE}+clamp", f"{BASE}+ttr"}
    assert census[f"{BASE}+ttr"]["backbone"]["role"]["kind"] == "remedy"
    assert census[f"{BASE}+ttr"]["metrics"]["extra_tokens"] == 1
    assert census[f"{BASE}+ttr"]["deviations"][0].startswith("ttr selection=robust_z")  # the smoke fit's rule
    assert census[f"{BASE}+clamp"]["metrics"]["extra_tokens"] == 0
    base_high = census[BASE]["metrics"]["high_norm_last"]
    assert base_high > 0
    assert census[f"{BASE}+ttr"]["metrics"]["high_norm_last"] <= 0.5 * base_high  # the outliers moved away
    assert census[f"{BASE}+clamp"]["metrics"]["high_norm_last"] < base_high
    depth = len(load_backbone(BASE).blocks)
    metrics = census[BASE]["metrics"]
    assert metrics["defects_total"] == pytest.approx(sum(metrics[f"block{i}/defects"] for i in range(depth)))

    text = build_report(out, tables="3", out_dir=tmp_path / "report", plots=True)
    section = text[text.index("### Remedies"):]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    shown = {label: f"{label} (constructed)" for label in census}  # the report says the model is constructed
    assert f"| {shown[BASE]} | base | smoke |" in lines[2]
    ttr_line = next(line for line in lines if f"{shown[BASE + '+ttr']} (of {shown[BASE]})" in line)
    cells = [c.strip() for c in ttr_line.strip("|").split("|")]
    high = census[f"{BASE}+ttr"]["metrics"]["high_norm_last"]
    assert cells[1] == "ttr" and cells[3] == f"{high:.4g} ({high - base_high:+.3g})"
    assert cells[-2] == "1"  # one extra inference token
    assert (tmp_path / "report" / "remedies.png").stat().st_size > 0
    from benchmarks.cli import main

    assert main(["report", "--runs", str(out), "--tables", "3", "--out", str(tmp_path / "cli"), "--no-plots"]) == 0
    assert f"remedies table written: {tmp_path / 'cli' / 'remedies'}.md" in capsys.readouterr().err
    assert f"{shown[BASE + '+ttr']} - {shown[BASE]}" in text  # Table 3's effects view gains the remedy
    assert f"| (no paper row: ttr) | ours: {shown[BASE + '+ttr']} (n=1) | smoke |" in text  # and a row of its own


def test_smoke_twins_and_remedies_go_to_each_named_backbone_of_the_remedies_suite():
    """Which backbones get the SINDER twin and the suite's smoke remedies: the default stand-in without
    --backbone (any suite); with --backbone, each named one without a remedy of its own, for a suite that lists
    remedies only; none in the paper profile."""
    from benchmarks.core.backbones import parse_backbone_spec
    from benchmarks.core.registry import get_suite
    from benchmarks.core.runner import _smoke_bases

    remedies, table = get_suite("remedies"), get_suite("imagenet_knn")
    assert remedies.meta.get("smoke_remedies") and not table.meta.get("smoke_remedies")
    clip, siglip = parse_backbone_spec("clip_tiny_defective"), parse_backbone_spec("siglip_tiny_defective")
    clamped = parse_backbone_spec("clip_tiny_defective+clamp:gamma=1")
    assert _smoke_bases([clip], False, False, "smoke", table) == [clip]  # the default, as before
    assert _smoke_bases([clip, siglip, clamped], True, False, "smoke", remedies) == [clip, siglip]
    assert _smoke_bases([clip], True, False, "smoke", table) == []
    assert _smoke_bases([clip], True, False, "paper", remedies) == []
    assert _smoke_bases([], False, True, "smoke", remedies) == []
