"""The SINDER repair on the other families' stand-ins (issue 21 items 3 and 5): it removes the planted defects of
``clip_tiny_defective`` and ``siglip_tiny_defective`` and leaves no unseen image worse (the census of
``sinder.defects.census``, as tests/test_repair_truth.py does for dinov2_tiny_defective); and a repaired
transformers folder is written back as one (``--save-format source``) that transformers itself loads."""

from __future__ import annotations

import json

import pytest
import torch

import sinder.repair.job as repair_job
from sinder.defects.census import compare_checkpoints
from sinder.models import defective as dm
from sinder.models.formats import CheckpointFormat, save_checkpoint
from sinder.models.weights import load_backbone
from sinder.repair.config import RepairConfig, preset_defaults
from sinder.utils.images import list_images

RES = 112


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from benchmarks.data.synth import write_synthetic

    tmp = tmp_path_factory.mktemp("families")
    train = write_synthetic("imagenet", tmp / "imagenet", seed=0, n_train=6, n_val=1).root / "train"
    unseen = []
    for name, images in (("ade20k", "ADEChallengeData2016/images"), ("cityscapes", "leftImg8bit")):
        root = write_synthetic(name, tmp / name, seed=1, n_train=8, n_val=2).root
        unseen += list_images(root / images)
    return train, unseen


@pytest.mark.slow
@pytest.mark.parametrize("name", [dm.CLIP_NAME, dm.SIGLIP_NAME])
def test_repair_removes_the_planted_defects_and_leaves_no_unseen_image_worse(folders, tmp_path, name):
    train, unseen = folders
    base, defaults = preset_defaults(name)
    assert defaults == f"preset {name}" and base["resolution"] == RES
    # 120 of the preset's 300 iterations: measured, every last-block high-norm token of the 20 unseen images goes
    # (CLIP-like 17 -> 0, SigLIP-like 25 -> 0), none made worse.
    config = RepairConfig.from_mapping({"holdout_images": 0, "max_iters": 120}, base=base)
    out = tmp_path / f"{name}.safetensors"
    report = repair_job.repair_checkpoint(name, train, out, config=config, device="cpu", progress=False,
                                          defaults=defaults)  # fmt: skip
    assert report["iterations_with_loss"] > 0
    record = compare_checkpoints(name, None, str(out), unseen, RES, method="expectation")
    before, after = record["comparison"]["high_norm_last_block"]
    assert before >= 6, before
    assert after <= before / 2, (before, after)
    assert record["comparison"]["images_made_worse"] == 0, record["comparison"]["worse_images"]
    repaired = load_backbone(name, weights=out)
    assert repaired.config["family"] == load_backbone(name).config["family"]


transformers = pytest.importorskip("transformers")


def clip_folder_of_the_stand_in(folder):
    """clip_tiny_defective as a transformers CLIPVisionModel folder, written by our own source-format writer."""
    model = load_backbone(dm.CLIP_NAME)
    cfg = model.config
    hf = transformers.CLIPVisionConfig(hidden_size=cfg["embed_dim"], intermediate_size=4 * cfg["embed_dim"],
                                       num_hidden_layers=cfg["depth"], num_attention_heads=cfg["num_heads"],
                                       image_size=cfg["img_size"], patch_size=cfg["patch_size"],
                                       hidden_act=cfg["act_layer"], layer_norm_eps=cfg["norm_eps"]).to_dict()  # fmt: skip
    save_checkpoint(model.state_dict(), folder, "hf", config=cfg, source=CheckpointFormat("hf", hf))
    return model


@pytest.mark.slow
def test_repaired_folder_in_the_source_format_loads_in_transformers(folders, tmp_path):
    from benchmarks.cli import main

    train, _ = folders
    source = tmp_path / "clip_tiny_defective_hf"
    stand_in = clip_folder_of_the_stand_in(source)
    theirs = transformers.CLIPVisionModel.from_pretrained(source).eval()
    x = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = theirs(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        ours = stand_in.get_intermediate_layers(x, n=8, norm=False)
    assert max((o - h[:, 1:]).abs().max().item() for o, h in zip(ours, hidden[1:])) <= 1e-5  # the source is right

    out = tmp_path / "repaired"
    code = main(["repair", "--backbone", str(source), "--images", str(train), "--out", str(out),
                 "--save-format", "source", "--resolution", str(RES), "--max-iters", "20", "--no-progress",
                 "--cfg-options", "sigma=1", "limit_layers=4", "n_samples=20000", "holdout_images=0"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "repaired.report.json").read_text())
    assert report["output_format"] == "hf" and report["iterations_with_loss"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    repaired = transformers.CLIPVisionModel.from_pretrained(out).eval()
    mine = load_backbone(str(source), weights=str(out))
    with torch.no_grad():
        hidden = repaired(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        tokens = mine.get_intermediate_layers(x, n=8, norm=False)
    for i, (o, h) in enumerate(zip(tokens, hidden[1:])):
        assert (o - h[:, 1:]).abs().max().item() <= 1e-5, f"block {i}"
    before, after = theirs.state_dict(), repaired.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith("weight") and ("proj" in k or "fc" in k) for k in changed)  # the repair ran


@pytest.mark.slow
@pytest.mark.parametrize("name", [dm.CLIP_NAME, dm.SIGLIP_NAME])
def test_remedies_suite_smoke_on_the_stand_in(tmp_path, name):
    """`sinder-bench run --suite remedies --profile smoke --backbone NAME`: every task of the suite on the stand-in,
    its SINDER twin, +clamp and +ttr (the suite's remedies applied to the named backbone, issue 21 item 5)."""
    from conftest import run_smoke_suite

    tasks = ["defect_census", "imagenet_knn", "seg_ade20k_linear", "depth_nyu_linear4"]
    code, records = run_smoke_suite("remedies", tmp_path / "runs", tmp_path / "cache", tasks, backbone=name)
    assert code == 0
    for task, record in records.items():
        assert record is not None and record["backbone"]["name"] == name, task
        labels = {json.loads(p.read_text())["backbone"]["label"] for p in (tmp_path / "runs" / task).glob("*.json")}
        assert labels == {name, f"{name}_sinder", f"{name}+clamp", f"{name}+ttr"}, task
    census = {}
    for path in (tmp_path / "runs" / "defect_census").glob("*.json"):
        record = json.loads(path.read_text())
        census[record["backbone"]["label"]] = record
    assert census[name]["metrics"]["high_norm_last"] > 0  # the planted defects are seen
    assert census[f"{name}_sinder"]["backbone"]["role"]["remedy"] == "sinder"
    assert census[f"{name}+clamp"]["backbone"]["remedy"]["name"] == "clamp"
    assert census[f"{name}+ttr"]["backbone"]["remedy"]["name"] == "ttr"
    assert all(r["backbone"]["family"] == census[name]["backbone"]["family"] for r in census.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", [dm.CLIP_NAME, dm.SIGLIP_NAME])
def test_smoke_remedies_of_the_stand_in_treat_its_defects(tmp_path, monkeypatch, name):
    """The remedies suite's smoke backbones (the base, its SINDER twin, +clamp, +ttr) built from the stand-in:
    each remedy lowers the last block's high-norm tokens of the census."""
    from remedies_harness import census_by_label, run_cheap_remedies_suite

    summary, out = run_cheap_remedies_suite(tmp_path, monkeypatch, name)
    assert summary.exit_code == 0 and len(summary.ran) == 4
    high = {label: record["metrics"]["high_norm_last"] for label, record in census_by_label(out).items()}
    assert set(high) == {name, f"{name}_sinder", f"{name}+clamp", f"{name}+ttr"}
    assert high[name] > 0
    for remedy in ("_sinder", "+clamp", "+ttr"):
        assert high[f"{name}{remedy}"] <= 0.5 * high[name], (remedy, high)
