# Table 4, PASCAL VOC 2012 "linear": as ade20k_linear.py with VOC's 21 classes (0 = background, 255 ignored)
# and the train.txt / val.txt lists of ImageSets/Segmentation.
_base_ = ["./_base_/model_bn_linear.py", "./_base_/schedule_40k.py"]

crop_size = (512, 512)
dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"  # the task points it at the prepared dataset

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(in_channels=[1536], in_index=[3], channels=1536, num_classes=21),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]

train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
        ann_file="ImageSets/Segmentation/train.txt",
        pipeline=train_pipeline,
    )
)
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
        ann_file="ImageSets/Segmentation/val.txt",
        pipeline=test_pipeline,
    )
)
test_dataloader = val_dataloader
