"""The fixed crops and resizes STEGO and CAUSE feed their backbone."""

import numpy as np
import pytest
import torch

from benchmarks.core.preprocessing import family_preprocessing
from benchmarks.unsupervised.data import (
    CropSpec,
    SegmentationView,
    crop_boxes,
    parse_crops,
    resize_pair,
)

DINOV2 = family_preprocessing("dinov2", 14)  # the ImageNet mean/std
IMAGENET_MEAN, IMAGENET_STD = DINOV2.mean, DINOV2.std


class ArrayDataset:
    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}


def test_five_crop_boxes_follow_torchvision_order():
    boxes = crop_boxes(10, 20, parse_crops([["five", 0.5]]))
    # top-left, top-right, bottom-left, bottom-right, centre (round half to even, as torchvision)
    assert boxes == [(0, 0, 5, 10, False), (0, 10, 5, 10, False), (5, 0, 5, 10, False), (5, 10, 5, 10, False),
                     (2, 5, 5, 10, False)]  # fmt: skip
    assert crop_boxes(7, 9, ()) == [(0, 0, 7, 9, False)]


def test_ten_crop_is_five_crop_of_the_mirrored_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 13, 3)).astype(np.uint8)
    label = rng.integers(0, 5, (9, 13))
    view = SegmentationView(ArrayDataset([image], [label]), 4, (CropSpec("ten", 0.6),), "square", preprocessing=DINOV2)
    assert len(view) == 10
    mirrored = image[:, ::-1]
    for k, (top, left, ch, cw, flipped) in enumerate(crop_boxes(9, 13, view.crops)):
        if k < 5:
            assert not flipped
            continue
        # crop k of the mirrored image sits where crop k-5 of the original image does
        t5, l5 = crop_boxes(9, 13, view.crops)[k - 5][:2]
        expected = mirrored[t5 : t5 + ch, l5 : l5 + cw]
        assert np.array_equal(image[top : top + ch, left : left + cw][:, ::-1], expected)


def test_resize_modes_and_nearest_labels():
    image = np.zeros((30, 60, 3), np.uint8)
    image[:, 30:] = 255
    label = np.zeros((30, 60), np.int64)
    label[:, 30:] = 7
    label[0, 0] = 255
    img, lab = resize_pair(image, label, 14, "short_center")
    assert img.shape == (14, 14, 3) and lab.shape == (14, 14)
    # short side 30 -> 14, long 60 -> 28, centre crop columns 7..20: the class boundary in the middle
    assert set(np.unique(lab)) <= {0, 7, 255}
    assert (lab[:, :7] == 0).all() and (lab[:, 7:] == 7).all()
    img, lab = resize_pair(image, label, 14, "square")
    assert lab.shape == (14, 14) and (lab[:, 7:] == 7).all()
    with pytest.raises(ValueError, match="resize mode"):
        resize_pair(image, label, 14, "stretch")


def test_view_items_are_normalized_images_with_their_labels():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (12, 20, 3)).astype(np.uint8) for _ in range(2)]
    labels = [rng.integers(0, 3, (12, 20)) for _ in range(2)]
    view = SegmentationView(ArrayDataset(images, labels), 6, parse_crops([["five", 0.5]]), preprocessing=DINOV2)
    assert len(view) == 10
    item = view[7]  # image 1, crop 2 (bottom-left)
    assert item["image"].shape == (3, 6, 6) and item["label"].shape == (6, 6) and item["rgb"].shape == (6, 6, 3)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    restored = (item["image"] * std + mean) * 255
    assert torch.allclose(restored, item["rgb"].permute(2, 0, 1).float(), atol=1e-3)
    # the bottom-left crop of image 1 is rows 6..11, columns 0..9; nearest resize to 6 x 10 then centre 6 x 6
    crop_label = labels[1][6:12, 0:10]
    assert set(item["label"].unique().tolist()) <= set(np.unique(crop_label).tolist())
    with pytest.raises(IndexError):
        view[10]


def test_parse_crops_rejects_bad_entries():
    assert parse_crops(None) == ()
    assert parse_crops([{"kind": "ten", "ratio": 0.3}])[0].count == 10
    with pytest.raises(ValueError, match="crop kind"):
        parse_crops([["nine", 0.5]])
    with pytest.raises(ValueError, match="ratio"):
        parse_crops([["five", 1.5]])
