# Semantic FPN with the ConvMLP-S backbone: mmsegmentation's FPN neck (4 outputs) and FPNHead
# (channels 128, dropout 0.1, SyncBN; the entry points turn SyncBN into BN where it cannot run: CPU,
# gloo, single process). The variant configs change the backbone type (and, for L, the FPN in_channels).
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512))  # training batches are padded to the crop size
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the backbone loads its ImageNet weights through its own init_cfg
    backbone=dict(
        type='SegConvMLPSmall',
        drop_path_rate=0.1,
        # ImageNet weights of the backbone's own variant from the model zoo (CONVMLP_WEIGHTS_BASE for a
        # mirror); set checkpoint=URL_or_path for another file, or init_cfg=None for random init.
        init_cfg=dict(type='Pretrained')),
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 256, 512],
        out_channels=256,
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
