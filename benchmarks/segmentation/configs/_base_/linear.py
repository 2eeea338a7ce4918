# Table 4 "linear" setting (either dataset): BN + 1x1 conv on the last block's patch maps; train and test at 512.
# Train: resize (ratio 0.5-2.0 of 2048x512), random crop 512 (cat_max_ratio 0.75), flip, photometric
# distortion. Test: short side 512 (long side at most 2048), slide inference 512 / stride 341.
# The top-level config puts train_pipeline / test_pipeline on the dataloaders of its dataset base.
_base_ = ["./model_bn_linear.py"]

crop_size = (512, 512)

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(in_channels=[1536], in_index=[3], channels=1536),
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
