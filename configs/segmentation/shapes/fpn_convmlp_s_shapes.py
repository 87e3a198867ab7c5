# Semantic FPN-S on the generated shapes (`python tools/make_shapes.py data/shapes`): the demo and test config.
# The release's model and optimizer, with 4 classes, 128x96 crops, a short schedule and a backbone from
# scratch (no download; set model.backbone.init_cfg=dict(type='Pretrained') for ImageNet weights).
_base_ = [
    '../../_base_/models/fpn_convmlp.py', '../../_base_/datasets/shapes_semantic.py',
    '../../_base_/schedules/adamw_poly_40k.py', '../../_base_/default_runtime_seg.py'
]
max_iters = 400
model = dict(
    data_preprocessor=dict(size=(96, 128)),  # batches padded to the crop (h, w)
    backbone=dict(type='SegConvMLPSmall', init_cfg=None),
    decode_head=dict(num_classes=4))
optim_wrapper = dict(optimizer=dict(lr=0.0004))
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
