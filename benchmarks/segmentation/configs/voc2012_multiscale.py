# Table 4, PASCAL VOC 2012 "multiscale": the multiscale setting (_base_/multiscale.py: last 4 blocks, crop 640,
# slide stride 426, multi-scale + flip TTA) on VOC 2012 (_base_/voc2012.py, 21 classes).
_base_ = ["./_base_/multiscale.py", "./_base_/voc2012.py"]

model = dict(decode_head=dict(num_classes=21))
train_dataloader = dict(dataset=dict(pipeline=_base_.train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader
