# Table 4, ADE20k "linear": the linear setting (_base_/linear.py: last block, crop 512, slide stride 341)
# on ADE20k (_base_/ade20k.py, 150 classes).
_base_ = ["./_base_/linear.py", "./_base_/ade20k.py"]

model = dict(decode_head=dict(num_classes=150))
train_dataloader = dict(dataset=dict(pipeline=_base_.train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader
