# Table 4 "multiscale" setting (either dataset): BN + 1x1 conv on the last 4 blocks' patch maps (concatenated);
# crop 640. Train: resize (ratio 1.0-3.0 of 2560x640), random crop 640 (cat_max_ratio 0.75), flip, photometric
# distortion. Test: short side 640 x [1.0, 1.32, 1.73, 2.28, 3.0] and horizontal flip (softmax averaged by
# SegTTAModel), slide inference 640 / stride 426 at each scale.
# The top-level config puts train_pipeline / test_pipeline on the dataloaders of its dataset base.
_base_ = ["./model_bn_linear.py"]

crop_size = (640, 640)
tta_ratios = [1.0, 1.32, 1.73, 2.28, 3.0]

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(in_channels=[1536] * 4, in_index=[0, 1, 2, 3], channels=1536 * 4),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(426, 426)),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2560, 640), ratio_range=(1.0, 3.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2560, 640), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="Resize", scale=(4 * round(640 * r), round(640 * r)), keep_ratio=True) for r in tta_ratios],
            [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
             dict(type="RandomFlip", prob=1.0, direction="horizontal")],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
