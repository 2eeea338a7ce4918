# The segmentor of Table 4: frozen ViT (patch maps of the last 4 blocks, final norm, inputs center-padded to a
# multiple of its patch size) + BatchNorm + 1x1 conv head. Channel counts are ViT-g's (1536); the task sets them
# from the backbone it runs, and attaches that backbone (backbone.spec stays None).
embed_dim = 1536
norm_cfg = dict(type="SyncBN", requires_grad=True)  # the task uses BN on a single process / CPU
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        # the backbone's mean/std on 0-255 pixels: filled in by benchmarks.segmentation.config.resolve_config
        # from the backbone's preprocessing (benchmarks.core.preprocessing)
        mean=None,
        std=None,
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(512, 512),
    ),
    # pad_multiple: the backbone's patch size, set by resolve_config
    backbone=dict(type="FrozenViTBackbone", spec=None, layers=4, norm=True, pad_multiple=None),
    decode_head=dict(
        type="BNLinearHead",
        in_channels=[embed_dim],
        in_index=[3],
        input_transform="resize_concat",
        channels=embed_dim,
        dropout_ratio=0.0,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)),
)
