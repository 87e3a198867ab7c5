# Mask R-CNN + ConvMLP on COCO 2017, 1x (paper: 28.7/37.1/62.2M params for S/M/L; see REPRODUCTION §3).
# S/M/L configs differ only in the `model` line.
_base_ = [
    '../_base_/models/mask_rcnn_convmlp_fpn.py', '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/adamw_1x.py', '../_base_/default_runtime_det.py'
]
model = dict(backbone=dict(type='DetConvMLPMedium'))
