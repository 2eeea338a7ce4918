"""What each dataset of the paper is: the facts ``sinder-bench ls`` lists and loaders put in their messages."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.data.errors import UnknownDatasetError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    task: str  # "classification" | "segmentation" | "depth"
    n_classes: int | None  # classes of the target the loader returns (None for depth)
    ignore_index: int | None  # target value that means "not evaluated" (0-depth pixels for depth)
    splits: tuple[str, ...]
    root_name: str  # default folder under a data directory, e.g. data/ade20k
    inner: str  # where the official archive's layout starts inside the root ("" = the root itself)
    layout: str  # the expected tree, shown in error messages
    url: str  # where the official data comes from
    archives: tuple[str, ...] = ()  # what to fetch there
    class_names: tuple[str, ...] = field(default=(), repr=False)

    def fix_hint(self) -> str:
        what = f" ({', '.join(self.archives)})" if self.archives else ""
        return f"get the official data{what} from {self.url} and unpack it so that <root> holds {self.layout}"


CITYSCAPES_27 = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)
VOC_21 = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
POTSDAM_3 = ("roads and cars", "buildings and clutter", "vegetation and trees")

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="imagenet",
            description="ImageNet-1k (ILSVRC2012) classification, class folders named by WordNet id",
            task="classification",
            n_classes=1000,
            ignore_index=None,
            splits=("train", "val"),
            root_name="imagenet",
            inner="",
            layout="train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val sorted into class folders by valprep.sh)",
            url="https://image-net.org/challenges/LSVRC/2012/2012-downloads.php",
            archives=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
        ),
        DatasetSpec(
            name="ade20k",
            description="ADE20k SceneParsing (ADEChallengeData2016), 150 classes, label 0 = other (reduce_zero_label)",
            task="segmentation",
            n_classes=150,
            ignore_index=255,
            splits=("train", "val"),
            root_name="ade20k",
            inner="ADEChallengeData2016",
            layout="ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*.{jpg,png}",
            url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        ),
        DatasetSpec(
            name="voc2012",
            description="PASCAL VOC 2012 segmentation, 21 classes, 255 = object boundary (ignored)",
            task="segmentation",
            n_classes=21,
            ignore_index=255,
            splits=("train", "val", "trainval"),
            root_name="voc2012",
            inner="VOCdevkit/VOC2012",
            layout="VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/*.txt}",
            url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            class_names=VOC_21,
        ),
        DatasetSpec(
            name="nyud",
            description="NYU Depth v2 (BTS / Monocular-Depth-Estimation-Toolbox layout), depth in mm, valid (1e-3, 10] m",
            task="depth",
            n_classes=None,
            ignore_index=0,
            splits=("train", "test"),
            root_name="nyud",
            inner="",
            layout="nyu_train.txt, nyu_test.txt (lines 'rgb_path depth_path focal') and <scene>/{rgb,sync_depth}_*",
            url="https://github.com/zhyever/Monocular-Depth-Estimation-Toolbox/blob/main/docs/dataset_prepare.md",
            archives=(
                "BTS sync.zip (train)",
                "the official labelled test set",
                "splits/nyu_train.txt, splits/nyu_test.txt",
            ),
        ),
        DatasetSpec(
            name="cityscapes",
            description="Cityscapes fine annotations; Cityscapes-27 for STEGO/CAUSE (label ids shifted by 7)",
            task="segmentation",
            n_classes=27,
            ignore_index=255,
            splits=("train", "val"),
            root_name="cityscapes",
            inner="",
            layout="leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png",
            url="https://www.cityscapes-dataset.com/downloads/",
            archives=("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip", "free registration"),
            class_names=CITYSCAPES_27,
        ),
        DatasetSpec(
            name="potsdam",
            description="ISPRS Potsdam-3 in STEGO's layout (6 classes merged into 3)",
            task="segmentation",
            n_classes=3,
            ignore_index=255,
            splits=("train", "unlabelled_train", "val", "train+val"),
            root_name="potsdam",
            inner="potsdam",
            layout="potsdam/{imgs/<id>.mat, gt/<id>.mat, labelled_train.txt, unlabelled_train.txt, labelled_test.txt}",
            url="https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/potsdam.zip",
            archives=("as STEGO's download_datasets.py fetches it",),
            class_names=POTSDAM_3,
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        ) from None
