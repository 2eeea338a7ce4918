# Shared by every Table 4 config: DINOv2's segmentation schedule and the mmengine runtime.
# AdamW lr 1e-3, wd 1e-4; poly (power 1) from iteration 0 to 0 at 40k iterations, its first 1500 iterations
# scaled by a linear warm-up from 1e-6: DINOv2's mmcv 1.x lr_config (policy='poly', warmup='linear',
# warmup_iters=1500, warmup_ratio=1e-6, power=1.0, min_lr=0.0, by_epoch=False; dinov2 eval/segmentation configs),
# computed as mmcv 1.x's PolyLrUpdaterHook did (benchmarks/segmentation/schedule.py).
default_scope = "mmseg"

optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=None,
)
param_scheduler = [
    dict(type="MMCVPolyLR", max_iters=40000, warmup_iters=1500, warmup_ratio=1e-6, power=1.0, eta_min=0.0,
         by_epoch=False, begin=0, end=40001),
]
# mmengine's IterBasedTrainLoop, but a resume skips the sampler's indices instead of reloading every batch
# trained on, and restores the RNG states kept in the checkpoint (benchmarks/segmentation/resume.py).
train_cfg = dict(type="ResumableIterBasedTrainLoop", max_iters=40000, val_interval=40000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # Checkpoints hold the head only (the frozen ViT is not part of the segmentor's state): small and resumable,
    # so every 500 iterations (minutes of work) costs little. Override with the task config's checkpoint_every.
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=500, max_keep_ckpts=2),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
custom_hooks = [dict(type="RNGStateHook")]  # generator states in every checkpoint, for an exact resume
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
tta_model = dict(type="SegTTAModel")

# The protocol's global batch; the task divides it by the number of ranks under torchrun.
train_dataloader = dict(batch_size=16, num_workers=4, persistent_workers=True, sampler=dict(type="InfiniteSampler", shuffle=True))
val_dataloader = dict(batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False))
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
