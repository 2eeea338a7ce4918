# PASCAL VOC 2012 (21 classes, 0 = background, 255 ignored; the train.txt / val.txt lists of
# ImageSets/Segmentation): the dataset half of the voc2012_* configs. The pipelines come from the setting
# (_base_/linear.py or _base_/multiscale.py) and the class count goes on the head in the top-level config.
_base_ = ["./schedule_40k.py"]

dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"  # the task points it at the prepared dataset

train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
        ann_file="ImageSets/Segmentation/train.txt",
    )
)
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
        ann_file="ImageSets/Segmentation/val.txt",
    )
)
test_dataloader = val_dataloader
