# Transfer in miniature (`make transfer`, tools/transfer.py), the from-scratch side: Semantic FPN-S on the
# generated scenes with the transfer schedule. Its *_pretrained.py twin differs only in the backbone's
# init_cfg (the ConvMLP-S pretrained on the shapes crops by classification.py).
_base_ = './fpn_convmlp_s_shapes.py'
# Rescaled 0.75-1.5x instead of ADE20K's 0.5-2x: at 2x a 96 px crop holds only part of a large shape,
# and a square's side alone looks like anything (measured: square IoU 19-25 with 0.5-2x).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 96), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(96, 96), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
max_iters = 400
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=50)     # eight points of the validation curve
default_hooks = dict(checkpoint=dict(interval=max_iters))
