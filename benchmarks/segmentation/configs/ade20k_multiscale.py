# Table 4, ADE20k "multiscale": the multiscale setting (_base_/multiscale.py: last 4 blocks, crop 640, slide
# stride 426, multi-scale + flip TTA) on ADE20k (_base_/ade20k.py, 150 classes).
_base_ = ["./_base_/multiscale.py", "./_base_/ade20k.py"]

model = dict(decode_head=dict(num_classes=150))
train_dataloader = dict(dataset=dict(pipeline=_base_.train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader
