# RetinaNet-S on the generated shapes (`python tools/make_shapes.py data/shapes`): the demo and test config.
# The release's model, with 3 classes, ~128 px images, a short schedule and a backbone from scratch
# (no download; set model.backbone.init_cfg=dict(type='Pretrained') to start from ImageNet weights).
_base_ = [
    '../../_base_/models/retinanet_convmlp_fpn.py', '../../_base_/datasets/shapes_detection.py',
    '../../_base_/schedules/adamw_shapes.py', '../../_base_/default_runtime_det.py'
]
model = dict(backbone=dict(type='DetConvMLPSmall', init_cfg=None), bbox_head=dict(num_classes=3))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=6, max_keep_ckpts=1))
