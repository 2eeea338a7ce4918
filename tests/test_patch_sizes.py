"""A resolution given for the paper's patch-14 DINOv2 on a backbone of another patch size: the repair, the
analysis and the census take the next multiple of the patch size (sinder.models.adapter.patch_multiple), say so,
and record the resolution that ran, instead of refusing every image (what a patch-16 SigLIP tower got before)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from sinder.models.adapter import patch_multiple
from sinder.repair.config import RepairConfig
from sinder.repair.job import repair_checkpoint
from sinder.utils.synthetic_images import write_synthetic_photos

transformers = pytest.importorskip("transformers")
PATCH = 16


@pytest.mark.parametrize(("size", "patch", "expected"), [(518, 16, 528), (518, 14, 518), (56, 16, 64), (320, 14, 322),
                                                          (1, 16, 16), (512, 16, 512)])  # fmt: skip
def test_patch_multiple_is_the_next_multiple(size, patch, expected):
    assert patch_multiple(size, patch) == expected
    assert expected % patch == 0 and size <= expected < size + patch


@pytest.fixture(scope="module")
def siglip16(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, image_size=64, patch_size=PATCH)  # fmt: skip
    folder = tmp_path_factory.mktemp("siglip16")
    transformers.SiglipVisionModel(config).save_pretrained(folder)
    return folder


def test_the_repair_of_a_patch_16_model_at_the_paper_s_518_runs_at_528(siglip16, tmp_path, caplog):
    images = write_synthetic_photos(tmp_path / "imgs", 12)
    config = RepairConfig(resolution=518, num_images=8, holdout_images=4, max_iters=3, n_samples=2_000)
    with caplog.at_level(logging.WARNING, logger="sinder"):
        report = repair_checkpoint(str(siglip16), images, tmp_path / "out.safetensors", config=config,
                                   progress=False, device="cpu")  # fmt: skip
    assert report["config"]["resolution"] == 528
    assert "resolution 518 is not a multiple of the backbone's patch size 16: the repair uses 528" in caplog.text
    assert (tmp_path / "out.safetensors").is_file()


def test_analyze_of_a_patch_16_model_at_518_runs_at_528(siglip16, tmp_path):
    import sinder
    from sinder.plots.analysis import analyze
    from sinder.utils.images import list_images

    images = list_images(write_synthetic_photos(tmp_path / "imgs", 3))
    said = []
    record = analyze(sinder.load_backbone(str(siglip16)), images, tmp_path / "an", n_samples=2_000, resolution=518,
                     log=said.append, mask_images=0, progress=False)  # fmt: skip
    assert record["settings"]["resolution"] == 528
    assert any("using 528" in line for line in said)
    assert json.loads((tmp_path / "an" / "analysis.json").read_text())["settings"]["resolution"] == 528
