"""Each loader reads its synthetic twin: counts, shapes, dtypes, target values and image/label alignment."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.data import DATASETS, open_dataset
from benchmarks.data.synth import write_synthetic
from benchmarks.data.synth.paint import Painter

N_TRAIN, N_VAL = 6, 3


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {
        name: write_synthetic(name, root / name, seed=11, n_train=N_TRAIN, n_val=N_VAL) for name in DATASETS
    }


def expected_target(name: str, raw: np.ndarray, **options) -> np.ndarray:
    """The target each loader should return, written out independently of the loaders' lookup tables."""
    raw = raw.astype(np.int64)
    if name == "ade20k":
        return raw if options.get("reduce_zero_label") is False else np.where(raw == 0, 255, raw - 1)
    if name == "cityscapes":
        return raw if options.get("labels") == "raw" else np.where(raw < 7, 255, raw - 7)
    if name == "potsdam":
        if options.get("coarse") is False:
            return raw
        return np.select([np.isin(raw, (0, 4)), np.isin(raw, (1, 5)), np.isin(raw, (2, 3))], [0, 1, 2], 255)
    return raw  # voc2012: values are the targets


def test_registry_lists_the_six_datasets_with_their_facts():
    assert list(DATASETS) == ["imagenet", "ade20k", "voc2012", "nyud", "cityscapes", "potsdam"]
    for name, spec in DATASETS.items():
        assert spec.name == name and spec.url.startswith("http") and spec.splits and spec.root_name
    assert (DATASETS["ade20k"].n_classes, DATASETS["voc2012"].n_classes) == (150, 21)
    assert (DATASETS["cityscapes"].n_classes, DATASETS["potsdam"].n_classes) == (27, 3)
    assert len(DATASETS["cityscapes"].class_names) == 27 and DATASETS["cityscapes"].class_names[0] == "road"
    assert DATASETS["nyud"].n_classes is None and DATASETS["nyud"].ignore_index == 0


@pytest.mark.parametrize("name", ["ade20k", "voc2012", "cityscapes", "potsdam"])
def test_segmentation_loaders_return_the_written_labels(twins, name):
    result = twins[name]
    spec = DATASETS[name]
    for split, truths in result.truths.items():
        ds = open_dataset(name, result.root, split)
        assert len(ds) == len(truths)
        by_id = {t.id: t for t in truths}
        for i in range(len(ds)):
            sample = ds[i]
            truth = by_id[sample["id"]]
            height, width = sample["image"].shape[:2]
            assert sample["image"].dtype == np.uint8 and sample["image"].shape[2] == 3
            assert sample["label"].dtype == np.int64 and sample["label"].shape == (height, width)
            if truth.label is None:  # potsdam's unlabelled images
                assert not sample["has_label"] and (sample["label"] == 255).all()
                continue
            np.testing.assert_array_equal(sample["label"], expected_target(name, truth.label))
            valid = sample["label"] != spec.ignore_index
            assert sample["label"][valid].min() >= 0 and sample["label"][valid].max() < spec.n_classes


@pytest.mark.parametrize("name", ["ade20k", "voc2012", "cityscapes", "potsdam"])
def test_image_colours_align_with_label_regions(twins, name):
    """Each labelled region's mean colour is nearest to its own class colour: image and mask are aligned."""
    result = twins[name]
    painter = Painter(_labels_of(name))
    ds = open_dataset(name, result.root, "train", **_raw_option(name))
    checked = 0
    for i in range(len(ds)):
        sample = ds[i]
        image = sample["image"].astype(np.float64)
        for value in np.unique(sample["label"]):
            region = sample["label"] == value
            if value == 255 or region.sum() < 60:
                continue
            mean = image[region].mean(axis=0) / 0.9  # texture and exposure average out near 0.9
            assert painter.labels[np.argmin(np.linalg.norm(painter.colours - mean, axis=1))] == value
            checked += 1
    assert checked >= 2 * len(ds)


def _labels_of(name):
    from benchmarks.data.synth import ade20k, cityscapes

    return {"ade20k": ade20k.LABELS, "cityscapes": cityscapes.LABELS, "voc2012": list(range(21)),
            "potsdam": list(range(6))}[name]  # fmt: skip


def _raw_option(name):
    return {
        "ade20k": {"reduce_zero_label": False},
        "cityscapes": {"labels": "raw"},
        "potsdam": {"coarse": False},
    }.get(name, {})


@pytest.mark.parametrize("name", ["ade20k", "voc2012", "cityscapes", "potsdam"])
def test_label_masks_cover_the_topmost_generated_shape(twins, name):
    ds = open_dataset(name, twins[name].root, "train", **_raw_option(name))
    for truth in twins[name].truths["train"]:
        sample = next(ds[i] for i in range(len(ds)) if ds[i]["id"] == truth.id)
        top = truth.shapes[-1]  # drawn last, so nothing but boundary bands / frame borders covers it
        mask = top.mask(*sample["label"].shape)
        assert mask.sum() > 0
        assert (sample["label"][mask] == top.label).mean() > 0.75


def test_voc_annotations_are_palette_pngs_with_boundaries(twins):
    result = twins["voc2012"]
    label_file = next(Path(result.root, f) for f in result.files if f.endswith(".png"))
    image = Image.open(label_file)
    assert image.mode == "P"
    assert image.getpalette()[3:6] == [128, 0, 0] and image.getpalette()[45:48] == [192, 128, 128]  # 1, 15
    split_ids = (result.root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt").read_text().split()
    assert len(split_ids) == N_TRAIN
    labels = [open_dataset("voc2012", result.root, "train")[i]["label"] for i in range(N_TRAIN)]
    assert all((lbl == 255).any() for lbl in labels)  # every object is outlined
    assert len(open_dataset("voc2012", result.root, "trainval")) == N_TRAIN + N_VAL


def test_imagenet_classes_follow_sorted_wnids(twins):
    result = twins["imagenet"]
    train = open_dataset("imagenet", result.root, "train")
    val = open_dataset("imagenet", result.root, "val")
    assert train.classes == sorted(train.classes) == val.classes and len(train.classes) == 10
    assert all(c.startswith("n") and len(c) == 9 for c in train.classes)
    assert len(train) == 10 * N_TRAIN and len(val) == 10 * N_VAL
    truth_cls = {t.image: t.cls for t in result.truths["val"]}
    for i in range(len(val)):
        image, target = val[i]
        path = Path(val.samples[i][0]).relative_to(result.root).as_posix()
        assert target == truth_cls[path] == val.class_to_idx[path.split("/")[1]]
        assert image.mode == "RGB" and image.size == (160, 128)
        assert Path(path).name.startswith("ILSVRC2012_val_") and path.endswith(".JPEG")


def test_nyud_depth_in_metres_matches_the_written_depth(twins):
    result = twins["nyud"]
    for split in ("train", "test"):
        ds = open_dataset("nyud", result.root, split)
        truths = {t.id: t for t in result.truths[split]}
        assert len(ds) == len(truths)
        assert [s[0] for s in ds.samples] == sorted(
            s[0] for s in ds.samples
        )  # the toolbox sorts by image path
        for i in range(len(ds)):
            sample = ds[i]
            truth = truths[sample["id"]]
            assert sample["depth"].dtype == np.float32 and sample["depth"].shape == sample["image"].shape[:2]
            np.testing.assert_allclose(sample["depth"], truth.depth, atol=1e-6)
            valid = sample["depth"] > 0
            assert valid.mean() > 0.8 and sample["depth"][valid].min() > 1e-3 and sample["depth"].max() <= 10
            assert sample["focal"] == pytest.approx(518.8579 * 160 / 640, abs=1e-3)
            nearest = truth.shapes[-1]  # drawn last: its visible pixels carry its depth
            region = nearest.mask(*sample["depth"].shape) & valid
            np.testing.assert_allclose(sample["depth"][region], round(nearest.depth * 1000) / 1000, atol=1e-6)
    lines = (result.root / "nyu_test.txt").read_text().splitlines()
    rgb, depth, focal = lines[0].split()
    assert rgb.startswith("/") and "/rgb_" in rgb and "/sync_depth_" in depth and float(focal) > 0
    assert len(open_dataset("nyud", result.root, "val")) == N_VAL  # "val" is the test split


def test_potsdam_reads_rgb_and_ir_from_mat(twins):
    from scipy.io import loadmat

    result = twins["potsdam"]
    ds = open_dataset("potsdam", result.root, "train")
    sample = ds[0]
    img = loadmat(sample["image_path"])["img"]
    assert img.shape[2] == 4 and img.dtype == np.uint8
    np.testing.assert_array_equal(sample["image"], img[..., :3])
    np.testing.assert_array_equal(sample["ir"], img[..., 3])
    assert loadmat(sample["label_path"])["gt"].max() <= 5
    assert len(open_dataset("potsdam", result.root, "train+val")) == N_TRAIN + N_VAL
    assert len(open_dataset("potsdam", result.root, "unlabelled_train")) == N_TRAIN


def test_loaders_accept_the_inner_folder_as_root_and_apply_transforms(twins):
    inner = twins["ade20k"].root / "ADEChallengeData2016"
    ds = open_dataset("ade20k", inner, "val", transform=lambda s: s["label"].shape)
    assert ds.root == inner and ds[0] == (128, 160) and ds[-1] == (128, 160)
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert len(open_dataset("voc2012", twins["voc2012"].root / "VOCdevkit" / "VOC2012", "val")) == N_VAL
    assert len(open_dataset("potsdam", twins["potsdam"].root / "potsdam", "val")) == N_VAL


def test_verify_decodes_every_sample(twins):
    for name, result in twins.items():
        split = next(iter(result.truths))
        assert open_dataset(name, result.root, split).verify() == len(result.truths[split])
