"""Loaders reject broken copies of their layout with errors naming the dataset, the path and the fix."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.data import (
    CorruptFileError,
    DatasetLayoutError,
    EmptySplitError,
    MalformedFileError,
    MissingPathError,
    UnknownDatasetError,
    UnknownSplitError,
    open_dataset,
)
from benchmarks.data.synth import write_synthetic

# (dataset, split, relative path of an annotation/target file of that split, of an image of that split)
TARGETS = {
    "ade20k": ("val", "ADEChallengeData2016/annotations/validation/ADE_val_00000002.png",
               "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg"),
    "voc2012": ("train", None, None),
    "nyud": ("test", "bedroom/sync_depth_00001.png", "bedroom/rgb_00001.jpg"),
    "cityscapes": ("val", "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png",
                   "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"),
    "potsdam": ("val", None, None),
}  # fmt: skip
SPLIT_FILES = {
    "voc2012": ("train", "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"),
    "nyud": ("train", "nyu_train.txt"),
    "potsdam": ("val", "potsdam/labelled_test.txt"),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    names = ["imagenet", *TARGETS]
    return {name: write_synthetic(name, root / name, seed=5, n_train=3, n_val=3) for name in names}


@pytest.fixture
def copy_of(pristine, tmp_path):
    def make(name):
        dest = tmp_path / name
        shutil.copytree(pristine[name].root, dest)
        return dest, pristine[name]

    return make


def target_and_image(name, result):
    """Relative paths of one annotation (depth / gt) file and its image in the split under test."""
    split, target, image = TARGETS[name]
    if target is None:
        truth = result.truths[split][1]
        target, image = truth.target, truth.image
    return split, target, image


def assert_names(err: DatasetLayoutError, dataset: str, path: Path):
    message = str(err)
    assert isinstance(err, ValueError)
    assert message.startswith(f"{dataset}: ")
    assert str(path) in message
    assert err.dataset == dataset and err.path == path


@pytest.mark.parametrize("name", list(TARGETS))
def test_missing_annotation_is_named(copy_of, name):
    root, result = copy_of(name)
    split, target, _ = target_and_image(name, result)
    (root / target).unlink()
    with pytest.raises(MissingPathError) as info:
        open_dataset(name, root, split)
    assert_names(info.value, name, root / target)
    assert "fix:" in str(info.value) and "http" in str(info.value)


@pytest.mark.parametrize("name", list(TARGETS))
def test_missing_image_is_named(copy_of, name):
    root, result = copy_of(name)
    split, _, image = target_and_image(name, result)
    (root / image).unlink()
    if name == "cityscapes":  # images are what the loader lists: a lone annotation is simply not listed
        assert len(open_dataset(name, root, split)) == len(result.truths[split]) - 1
        return
    with pytest.raises(MissingPathError) as info:
        open_dataset(name, root, split)
    assert_names(info.value, name, root / image)


@pytest.mark.parametrize("name", list(TARGETS))
def test_truncated_annotation_fails_on_read_with_its_path(copy_of, name):
    root, result = copy_of(name)
    split, target, _ = target_and_image(name, result)
    data = (root / target).read_bytes()
    (root / target).write_bytes(data[: len(data) // 2])
    ds = open_dataset(name, root, split)  # structure is intact: opening stays cheap and succeeds
    with pytest.raises(CorruptFileError) as info:
        ds.verify()
    assert_names(info.value, name, root / target)
    index = next(i for i in range(len(ds)) if str(root / target) in str(_paths(ds, i)))
    with pytest.raises(CorruptFileError):
        ds[index]


def _paths(ds, index):
    return ds.samples[index] if hasattr(ds, "samples") else ds.pairs[index]


@pytest.mark.parametrize("name", ["imagenet", *TARGETS])
def test_garbage_image_is_reported_as_corrupt(copy_of, name):
    root, result = copy_of(name)
    split = next(iter(result.truths))
    image = root / result.truths[split][0].image
    image.write_bytes(b"this is not an image" * 10)
    with pytest.raises(CorruptFileError) as info:
        open_dataset(name, root, split).verify()
    assert_names(info.value, name, image)


@pytest.mark.parametrize("name", list(SPLIT_FILES))
def test_removed_or_empty_split_file(copy_of, name):
    root, _ = copy_of(name)
    split, relative = SPLIT_FILES[name]
    (root / relative).write_text("\n  \n")
    with pytest.raises(EmptySplitError) as info:
        open_dataset(name, root, split)
    assert_names(info.value, name, root / relative)
    (root / relative).unlink()
    with pytest.raises(MissingPathError) as info:
        open_dataset(name, root, split)
    assert_names(info.value, name, root / relative)
    assert "split file" in str(info.value)


def test_nyud_malformed_line_names_the_line(copy_of):
    root, _ = copy_of("nyud")
    split_file = root / "nyu_test.txt"
    lines = split_file.read_text().splitlines()
    split_file.write_text("\n".join([lines[0], "", "/bedroom/rgb_00001.jpg"]) + "\n")
    with pytest.raises(MalformedFileError, match="line 3") as info:
        open_dataset("nyud", root, "test")
    assert_names(info.value, "nyud", split_file)
    split_file.write_text(lines[0].rsplit(" ", 1)[0] + " not-a-focal\n")
    with pytest.raises(MalformedFileError, match="focal"):
        open_dataset("nyud", root, "test")
    split_file.write_text(lines[0] + "\n/bedroom/rgb_00009.jpg None 518.8579\n")  # the toolbox skips 'None'
    assert len(open_dataset("nyud", root, "test")) == 1


def test_wrong_png_mode_and_out_of_range_labels(copy_of):
    root, result = copy_of("voc2012")
    truth = result.truths["train"][0]
    colour = np.zeros((*truth.label.shape, 3), np.uint8)
    Image.fromarray(colour).save(root / truth.target)
    with pytest.raises(MalformedFileError, match="mode 'RGB'") as info:
        open_dataset("voc2012", root, "train").verify()
    assert_names(info.value, "voc2012", root / truth.target)

    root, result = copy_of("ade20k")
    truth = result.truths["train"][0]
    label = truth.label.copy()
    label[:4, :4] = 200  # ADE has 150 classes
    Image.fromarray(label).save(root / truth.target)
    with pytest.raises(MalformedFileError, match=r"\[200\]") as info:
        open_dataset("ade20k", root, "train").verify()
    assert_names(info.value, "ade20k", root / truth.target)


def test_label_and_image_size_mismatch(copy_of):
    root, result = copy_of("cityscapes")
    truth = result.truths["train"][0]
    Image.fromarray(truth.label[:50]).save(root / truth.target)
    with pytest.raises(MalformedFileError, match="same size"):
        open_dataset("cityscapes", root, "train").verify()


def test_potsdam_mat_without_its_array(copy_of):
    from scipy.io import savemat

    root, result = copy_of("potsdam")
    truth = result.truths["val"][0]
    savemat(root / truth.image, {"image": np.zeros((4, 4, 4), np.uint8)})
    with pytest.raises(MalformedFileError, match="'img'") as info:
        open_dataset("potsdam", root, "val").verify()
    assert_names(info.value, "potsdam", root / truth.image)


def test_imagenet_class_folder_problems(copy_of):
    root, result = copy_of("imagenet")
    train_classes = sorted(p.name for p in (root / "train").iterdir())
    shutil.rmtree(root / "val" / train_classes[4])
    with pytest.raises(MissingPathError) as info:
        open_dataset("imagenet", root, "val")
    assert_names(info.value, "imagenet", root / "val" / train_classes[4])

    for image in (root / "train" / train_classes[2]).iterdir():
        image.unlink()
    with pytest.raises(EmptySplitError) as info:
        open_dataset("imagenet", root, "train")
    assert_names(info.value, "imagenet", root / "train" / train_classes[2])

    flat = root / "val"
    shutil.rmtree(flat)
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(flat / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    with pytest.raises(EmptySplitError, match="valprep"):
        open_dataset("imagenet", root, "val")


def test_bad_root_split_and_name(tmp_path, pristine):
    with pytest.raises(MissingPathError) as info:
        open_dataset("ade20k", tmp_path / "nowhere", "train")
    assert_names(info.value, "ade20k", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingPathError, match="ADEChallengeData2016"):
        open_dataset("ade20k", tmp_path / "empty", "train")
    with pytest.raises(UnknownSplitError, match="train, val"):
        open_dataset("cityscapes", pristine["cityscapes"].root, "test-dev")
    with pytest.raises(UnknownDatasetError, match="potsdam"):
        open_dataset("coco", tmp_path, "train")
