# ADE20k (SceneParsing, 150 classes; reduce_zero_label maps "other" to 255, ignored): the dataset half of the
# ade20k_* configs. The pipelines come from the setting (_base_/linear.py or _base_/multiscale.py) and the
# class count goes on the head in the top-level config (both own `model`, which bases may not share).
_base_ = ["./schedule_40k.py"]

dataset_type = "ADE20KDataset"
data_root = "data/ADEChallengeData2016"  # the task points it at the prepared dataset

train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
        reduce_zero_label=True,
    )
)
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
        reduce_zero_label=True,
    )
)
test_dataloader = val_dataloader
