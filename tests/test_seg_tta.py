"""The mmseg path end to end on a small synthetic VOC: training, resume from an mmengine checkpoint under torch
2.13's weights_only loading, and multiscale test-time augmentation (5 scales x 2 flips, softmax-averaged)."""

import copy

import pytest
import torch

from benchmarks.core.preprocessing import family_preprocessing

pytest.importorskip("mmseg", reason="segmentation stack not installed (mmsegmentation==1.2.2)")

from benchmarks.data.synth import write_synthetic  # noqa: E402
from benchmarks.segmentation.config import load_config, resolve_config  # noqa: E402
from benchmarks.segmentation.mmseg_env import ensure_mmseg  # noqa: E402
from benchmarks.segmentation.task import dataset_base  # noqa: E402
from benchmarks.segmentation.train import train_and_evaluate  # noqa: E402
from sinder.models.weights import load_backbone  # noqa: E402

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std, patch 14

SMOKE = {"crop": 70, "warmup": 2, "batch_size": 2, "lr": 3e-3, "log_level": "ERROR", "eval_images": 2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ensure_mmseg()
    root = tmp_path_factory.mktemp("voc")
    write_synthetic("voc2012", root, seed=1, n_train=6, n_val=2)
    backbone = load_backbone("dinov2_tiny_random")
    work = tmp_path_factory.mktemp("work")

    def config(iterations):
        return resolve_config(load_config("voc2012", "multiscale"), preprocessing=DINOV2,
                              data_root=dataset_base("voc2012", root),
                              embed_dim=backbone.embed_dim, work_dir=work, overrides={**SMOKE, "iterations": iterations})  # fmt: skip

    first = train_and_evaluate(config(8), backbone, tta=True)
    return {"config": config, "backbone": backbone, "first": first, "work": work}


def test_training_runs_and_reports_iou_metrics(trained):
    single = trained["first"]["single_scale"]
    assert set(single) == {"mIoU", "aAcc", "mAcc"}
    assert 0.0 <= single["mIoU"] <= 100.0 and 0.0 < single["aAcc"] <= 100.0
    assert trained["first"]["resumed"] is False
    assert (trained["work"] / "iter_8.pth").is_file()


def test_tta_runs_and_differs_from_single_scale(trained):
    """Views: 5 scales x 2 flips of each image; the merged prediction is the argmax of their mean softmax."""
    from mmengine.dataset import Compose, pseudo_collate
    from mmseg.models.segmentors.seg_tta import SegTTAModel
    from mmseg.registry import DATASETS

    cfg = trained["config"](8)
    segmentor = trained["first"]["segmentor"].eval()
    dataset = DATASETS.build(copy.deepcopy(cfg.test_dataloader.dataset))
    info = dataset.get_data_info(0)
    views = Compose(copy.deepcopy(cfg.tta_pipeline))(copy.deepcopy(info))
    assert len(views["inputs"]) == 10
    flips = [s.metainfo["flip"] for s in views["data_samples"]]
    heights = sorted({s.metainfo["img_shape"][0] for s in views["data_samples"]})
    assert flips.count(True) == 5 and len(heights) == 5 and heights[-1] > 2.5 * heights[0]

    tta = SegTTAModel(module=segmentor)
    with torch.no_grad():
        merged = tta.test_step(pseudo_collate([views]))[0].pred_sem_seg.data
        probs = []
        for inputs, data_sample in zip(views["inputs"], views["data_samples"]):
            out = segmentor.test_step(pseudo_collate([{"inputs": inputs, "data_samples": data_sample}]))[0]
            probs.append(out.seg_logits.data.softmax(dim=0))
        single_view = Compose(copy.deepcopy(cfg.test_dataloader.dataset.pipeline))(copy.deepcopy(info))
        single = segmentor.test_step(pseudo_collate([single_view]))[0].pred_sem_seg.data
    expected = torch.stack(probs).mean(0).argmax(0)
    assert merged.shape[-2:] == single.shape[-2:] == tuple(views["data_samples"][0].ori_shape)
    assert torch.equal(merged.squeeze(0), expected)
    assert (merged != single).any(), "test-time augmentation gave exactly the single-scale prediction"
    assert trained["first"]["tta"] is not None and set(trained["first"]["tta"]) == {"mIoU", "aAcc", "mAcc"}


def test_resume_reloads_the_runner_checkpoint(trained):
    """mmengine pickles HistoryBuffers into its checkpoints; with the allow-list they load under weights_only."""
    resumed = train_and_evaluate(trained["config"](12), trained["backbone"], tta=False)
    assert resumed["resumed"] is True
    assert (trained["work"] / "iter_12.pth").is_file()
    state = torch.load(trained["work"] / "iter_12.pth", map_location="cpu", weights_only=True)
    assert state["meta"]["iter"] == 12
    assert set(state["state_dict"]) == set(resumed["segmentor"].state_dict())  # the head only, no ViT weights
