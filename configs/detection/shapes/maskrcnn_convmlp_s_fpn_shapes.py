# Mask R-CNN-S on the generated shapes (`python tools/make_shapes.py data/shapes`): the demo and test config.
# The release's model, with 3 classes, ~128 px images, a short schedule and a backbone from scratch
# (no download; set model.backbone.init_cfg=dict(type='Pretrained') to start from ImageNet weights).
_base_ = [
    '../../_base_/models/mask_rcnn_convmlp_fpn.py', '../../_base_/datasets/shapes_instance.py',
    '../../_base_/schedules/adamw_shapes.py', '../../_base_/default_runtime_det.py'
]
model = dict(
    backbone=dict(type='DetConvMLPSmall', init_cfg=None),
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    # scenes hold at most 4 objects: 128 sampled RoIs per image instead of 512 (4x less CPU in the heads)
    train_cfg=dict(rcnn=dict(sampler=dict(num=128))),
    # and at test 300 proposals, 20 detections per image instead of 1000 and 100: the mask head runs on
    # every detection, and that made a validation of 64 scenes about as slow as a training epoch
    test_cfg=dict(rpn=dict(max_per_img=300), rcnn=dict(max_per_img=20)))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=6, max_keep_ckpts=1))
