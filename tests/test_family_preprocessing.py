"""Issue 21, items 1 and 4: each family's own preprocessing reaches every task, and the benchmarks run on it.

A transformers CLIP folder with a ``preprocessor_config.json`` of non-default statistics: ``describe()`` carries
them, and the KNN task's loader normalises with them (a loaded image against a normalisation computed here).
Without the file a family's defaults apply (CLIP: OpenAI's, SigLIP: 0.5). A patch-16 SigLIP tower is padded to
multiples of 16 for segmentation. KNN and the linear probe take the family's pooled feature (SigLIP: the attention
pool's output, compared with transformers' ``pooler_output``). A smoke run of one task per table family on a CLIP
and a SigLIP folder records the family and its preprocessing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sinder
from benchmarks.core.preprocessing import pooled_layers, preprocessing_of
from sinder.models.backbone import describe

transformers = pytest.importorskip("transformers")

OWN_MEAN, OWN_STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
OPENAI_CLIP = (
    (0.48145466, 0.4578275, 0.40821073),
    (0.26862954, 0.26130258, 0.27577711),
)  # CLIPImageProcessor's


def _perturbed(model):
    with torch.no_grad():  # non-trivial norms and biases, so that a mapping mistake shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "probe" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def clip_folder(path, patch=14, image=56, processor: dict | None = None):
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                           intermediate_size=128, image_size=image, patch_size=patch)  # fmt: skip
    model = _perturbed(transformers.CLIPVisionModel(config))
    model.save_pretrained(path)
    if processor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(processor))
    return model


def siglip_folder(path, patch=16, image=64):
    torch.manual_seed(1)
    config = transformers.SiglipVisionConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                             intermediate_size=128, image_size=image, patch_size=patch)  # fmt: skip
    model = _perturbed(transformers.SiglipVisionModel(config))
    model.save_pretrained(path)
    return model


def dinov3_folder(path, patch=16, image=64, registers=4):
    torch.manual_seed(2)
    config = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                          intermediate_size=128, image_size=image, patch_size=patch,
                                          num_register_tokens=registers)  # fmt: skip
    model = _perturbed(transformers.DINOv3ViTModel(config))
    model.save_pretrained(path)
    return model


def test_a_clip_folder_carries_its_own_preprocessing(tmp_path):
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "image_mean": OWN_MEAN,
        "image_std": OWN_STD,
        "do_center_crop": True,
        "crop_size": {"height": 42, "width": 42},
        "size": {"shortest_edge": 48},
    }
    clip_folder(tmp_path / "clip", processor=processor)
    cfg = describe(sinder.load_backbone(str(tmp_path / "clip"))).pretrained_cfg
    assert (cfg.mean, cfg.std, cfg.input_size, cfg.patch_size) == (
        tuple(OWN_MEAN),
        tuple(OWN_STD),
        (3, 42, 42),
        14,
    )


def test_family_defaults_without_a_preprocessor_config(tmp_path):
    clip_folder(tmp_path / "clip")
    siglip_folder(tmp_path / "siglip")
    clip, siglip = (preprocessing_of(sinder.load_backbone(str(tmp_path / n))) for n in ("clip", "siglip"))
    assert (clip.mean, clip.std, clip.input_size, clip.pooling) == (*OPENAI_CLIP, (3, 56, 56), "cls")
    assert (siglip.mean, siglip.std, siglip.patch_size, siglip.pooling) == (
        (0.5,) * 3,
        (0.5,) * 3,
        16,
        "attention",
    )
    dinov2 = preprocessing_of(sinder.load_backbone("dinov2_tiny_defective"))
    assert (dinov2.mean, dinov2.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize(("processor", "message"), [
    ({"image_mean": [0.5, 0.5]}, "image_mean [0.5, 0.5] is not 3 finite numbers"),
    ({"image_std": [0.5, 0.0, 0.5]}, "is not 3 finite numbers > 0"),
])  # fmt: skip
def test_a_bad_preprocessor_config_is_refused_at_preflight(tmp_path, processor, message):
    from benchmarks.core.backbones import backbone_problem, parse_backbone_spec

    clip_folder(tmp_path / "clip", processor=processor)
    problem = backbone_problem(parse_backbone_spec(f"clip={tmp_path / 'clip'}"))
    assert problem is not None and message in problem and "\n" not in problem


def test_the_knn_loader_normalizes_with_the_checkpoints_statistics(tmp_path, monkeypatch):
    from PIL import Image

    from benchmarks.classification import task as knn_task
    from benchmarks.classification.transforms import CenterCrop, Resize
    from benchmarks.core.job import TaskContext
    from benchmarks.data.synth import write_synthetic

    clip_folder(tmp_path / "clip", processor={"image_mean": OWN_MEAN, "image_std": OWN_STD})
    model = sinder.load_backbone(str(tmp_path / "clip"))
    write_synthetic("imagenet", tmp_path / "imagenet", seed=0, n_train=1, n_val=1, n_classes=2)
    seen = {}

    def capture(backbone, dataset, feature_fn, **kwargs):
        seen["dataset"] = dataset
        raise StopIteration  # the loaded images are all this test needs

    monkeypatch.setattr(knn_task, "extract_features", capture)
    task = knn_task.ImageNetKNN()
    ctx = TaskContext(profile="smoke", config=task.config("smoke"), datasets={"imagenet": tmp_path / "imagenet"},
                      device=torch.device("cpu"))  # fmt: skip
    with pytest.raises(StopIteration):
        task.run(model, ctx)
    dataset = seen["dataset"]
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    first = next(p for p in sorted((tmp_path / "imagenet" / "train").rglob("*")) if p.is_file())
    crop = CenterCrop(ctx.config["crop"])(Resize(ctx.config["resize"])(Image.open(first).convert("RGB")))
    pixels = np.asarray(crop, dtype=np.float64) / 255.0
    expected = (pixels - np.array(OWN_MEAN)) / np.array(OWN_STD)
    got = batch.numpy().transpose(0, 2, 3, 1)
    errors = np.abs(got - expected[None]).reshape(len(got), -1).max(axis=1)
    assert (
        errors.min() < 1e-5
    )  # one of the loaded images is that file, normalised with the checkpoint's mean/std


def test_a_patch16_siglip_tower_is_padded_to_multiples_of_16_for_segmentation(tmp_path):
    pytest.importorskip("mmseg")
    from benchmarks.segmentation.backbone import FrozenViTBackbone
    from benchmarks.segmentation.config import load_config, resolve_config

    siglip_folder(tmp_path / "siglip")
    model = sinder.load_backbone(str(tmp_path / "siglip"))
    cfg = resolve_config(load_config("ade20k", "linear"), data_root="d", embed_dim=64, work_dir="w",
                         preprocessing=preprocessing_of(model), overrides={"crop": 84})  # fmt: skip
    assert cfg.model.backbone.pad_multiple == 16
    assert cfg.model.data_preprocessor.mean == [127.5] * 3 and cfg.model.data_preprocessor.std == [127.5] * 3
    wrapper = FrozenViTBackbone(layers=1, pad_multiple=cfg.model.backbone.pad_multiple).attach(model)
    (maps,) = wrapper(torch.randn(1, 3, 84, 84))
    assert maps.shape == (1, 64, 6, 6)  # 84 padded to 96 = 6 x 16, not 98 = 7 x 14


def test_siglip_pooled_feature_is_its_attention_pool(tmp_path):
    reference = siglip_folder(tmp_path / "siglip")
    model = sinder.load_backbone(str(tmp_path / "siglip"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ((patches, pooled),) = pooled_layers(model, x, n=1, norm=True)
        theirs = reference(pixel_values=x)
    assert (pooled - theirs.pooler_output).abs().max().item() <= 1e-5
    assert (patches - theirs.last_hidden_state).abs().max().item() <= 1e-5  # post_layernorm on every token


def test_clip_pooled_feature_is_the_class_token(tmp_path):
    clip_folder(tmp_path / "clip")
    model = sinder.load_backbone(str(tmp_path / "clip"))
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ((_, pooled),) = pooled_layers(model, x, n=1, norm=True)
        ((_, cls),) = model.get_intermediate_layers(x, n=1, return_class_token=True, norm=True)
    assert torch.equal(pooled, cls)


@pytest.mark.slow
def test_smoke_benchmarks_on_clip_and_siglip_record_family_and_preprocessing(tmp_path):
    pytest.importorskip("mmseg")
    from benchmarks.core.results import ResultStore
    from benchmarks.core.runner import run_suite

    clip_folder(tmp_path / "clip", processor={"image_mean": OWN_MEAN, "image_std": OWN_STD,
                                              "crop_size": {"height": 56, "width": 56}})  # fmt: skip
    siglip_folder(tmp_path / "siglip")
    summary = run_suite(
        "imagenet_knn,seg_ade20k_linear,depth_nyu_linear4",
        [f"clip={tmp_path / 'clip'}", f"siglip={tmp_path / 'siglip'}"],
        profile="smoke",
        out=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda m: None,
    )
    assert summary.failed == [] and len(summary.ran) == 6
    records = {(r["backbone"]["label"], r["task"]): r for r in ResultStore(tmp_path / "runs").records()}
    assert len(records) == 6
    expected = {
        "clip": ("clip", OWN_MEAN, OWN_STD, [56, 56], 14, "class token"),
        "siglip": ("siglip", [0.5] * 3, [0.5] * 3, [64, 64], 16, "attention-pool head output"),
    }
    for (label, task), record in records.items():
        family, mean, std, resolution, patch, pooled = expected[label]
        pre = record["backbone"]["preprocessing"]
        assert record["backbone"]["family"] == family
        assert (pre["mean"], pre["std"], pre["resolution"], pre["patch_size"]) == (
            mean,
            std,
            resolution,
            patch,
        )
        assert pre["pooled_feature"].startswith(pooled)
        assert all(np.isfinite(v) for v in record["metrics"].values()) and record["metrics"]
        if task == "imagenet_knn":
            assert record["hparams"]["pooled_feature"].startswith(pooled)
            padding = record["hparams"].get("input_padding")  # the smoke crop, 56, is no multiple of 16
            assert padding == ("56 px crops center-padded to 64 (patch 16)" if patch == 16 else None)
        if task == "seg_ade20k_linear":
            assert (
                record["config"]["overrides"]["crop"] == 84
            )  # padded to 96 for patch 16 (the wrapper's test)


@pytest.mark.slow
def test_smoke_benchmarks_on_a_dinov3_like_backbone(tmp_path):
    """A random tiny transformers DINOv3 (patch 16, a class token and 4 registers, RoPE): KNN, the linear
    segmentation head and the depth head run in the smoke profile, whose sizes are multiples of 14."""
    pytest.importorskip("mmseg")
    from benchmarks.core.results import ResultStore
    from benchmarks.core.runner import run_suite

    dinov3_folder(tmp_path / "dinov3")
    summary = run_suite("imagenet_knn,seg_ade20k_linear,depth_nyu_linear4", [f"dinov3={tmp_path / 'dinov3'}"],
                        profile="smoke", out=tmp_path / "runs", cache_dir=tmp_path / "cache", progress=False,
                        log=lambda m: None)  # fmt: skip
    assert summary.failed == [] and len(summary.ran) == 3
    records = {r["task"]: r for r in ResultStore(tmp_path / "runs").records()}
    assert set(records) == {"imagenet_knn", "seg_ade20k_linear", "depth_nyu_linear4"}
    for task, record in records.items():
        pre = record["backbone"]["preprocessing"]
        assert record["backbone"]["family"] == "dinov3", task
        assert (pre["mean"], pre["std"], pre["resolution"], pre["patch_size"]) == (
            [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], [64, 64], 16)  # fmt: skip
        assert pre["pooled_feature"] == "class token"
        assert record["metrics"] and all(np.isfinite(v) for v in record["metrics"].values()), task
    assert records["imagenet_knn"]["hparams"]["input_padding"] == "56 px crops center-padded to 64 (patch 16)"


def test_patch_multiple_is_the_one_rounding_rule():
    from benchmarks.core.padding import center_pad_amounts
    from benchmarks.core.preprocessing import patch_multiple
    from benchmarks.unsupervised.stego import selection_resolution

    assert [patch_multiple(s, 16) for s in (56, 64, 65, 320)] == [64, 64, 80, 320]
    assert [patch_multiple(s, 14) for s in (56, 320, 322)] == [56, 322, 322]
    assert center_pad_amounts(56, 16) == (4, 4) and center_pad_amounts(57, 16) == (3, 4)
    assert selection_resolution({"val_resolution": 320, "eval_resolution": 56}, 14) == 322


def test_unsupervised_resolutions_round_to_the_patch_size_and_are_recorded():
    from benchmarks.unsupervised.task import _at_patch_size, _note_rounding

    config = {"train_resolution": 56, "knn_resolution": 56, "eval_resolution": 64, "steps": 3}
    keys = ("train_resolution", "knn_resolution", "eval_resolution")
    assert _at_patch_size(config, keys, 16) == {**config, "train_resolution": 64, "knn_resolution": 64}
    assert _at_patch_size(config, keys[:2], 14) == config
    noted = _note_rounding({"hparams": {}}, config, keys, 16)
    assert noted["hparams"]["resolutions_at_patch_size"] == {"train_resolution": 64, "knn_resolution": 64}
    assert "resolutions_at_patch_size" not in _note_rounding({"hparams": {}}, config, keys[:2], 14)["hparams"]


def test_ls_lists_the_families_and_the_checkpoint_formats(capsys):
    from benchmarks.cli import main
    from sinder.models.adapter import FAMILIES
    from sinder.models.formats import FORMATS

    for what, names in (("families", FAMILIES), ("formats", FORMATS)):
        assert main(["ls", what]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == f"{what}:"
        assert [line.split()[0] for line in lines[1:]] == list(names)
    assert main(["ls", "families"]) == 0
    clip_line = next(line for line in capsys.readouterr().out.splitlines() if line.split()[0] == "clip")
    assert (
        clip_line.split(None, 1)[1]
        == "default mean (0.481455, 0.457827, 0.408211), std (0.26863, 0.261303, 0.275777)"
    )


def test_a_timm_folder_carries_its_pretrained_cfg(tmp_path):
    """timm's ``save_pretrained`` config.json: ``pretrained_cfg`` with mean, std and input size."""
    from test_families_restated import _timm_folder, _timm_state

    folder = _timm_folder(tmp_path, "deit3_base_patch16_224", _timm_state("deit3_base_patch16_224"))
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"] = {"input_size": [3, 48, 48], "mean": OWN_MEAN, "std": OWN_STD}
    (folder / "config.json").write_text(json.dumps(config))
    pre = preprocessing_of(sinder.load_backbone(str(folder)))
    assert (pre.family, pre.mean, pre.std, pre.input_size) == (
        "deit3",
        tuple(OWN_MEAN),
        tuple(OWN_STD),
        (3, 48, 48),
    )
    del config["pretrained_cfg"]  # without it: the family's (DeiT-III: ImageNet's)
    (folder / "config.json").write_text(json.dumps(config))
    pre = preprocessing_of(sinder.load_backbone(str(folder)))
    assert (pre.mean, pre.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_an_open_clip_folder_carries_its_preprocess_cfg(tmp_path):
    from test_families_restated import _open_clip_state

    from sinder.models.state_io import save_state_dict

    tower = _open_clip_state(layer_scale=False)
    save_state_dict({f"visual.{k}": v for k, v in tower.items()}, tmp_path / "open_clip_model.safetensors")
    cfg = {"model_cfg": {"quick_gelu": True, "vision_cfg": {"head_width": 16}},
           "preprocess_cfg": {"mean": OWN_MEAN, "std": OWN_STD}}  # fmt: skip
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    pre = preprocessing_of(sinder.load_backbone(str(tmp_path)))
    assert (pre.family, pre.mean, pre.std) == ("clip", tuple(OWN_MEAN), tuple(OWN_STD))
