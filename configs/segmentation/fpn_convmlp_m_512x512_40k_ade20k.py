# Semantic FPN + ConvMLP on ADE20K, 512x512 crops, 40k iterations (paper: 12.8/21.1/46.3M params).
# S/M/L configs differ only in the `model` line.
_base_ = [
    '../_base_/models/fpn_convmlp.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_poly_40k.py', '../_base_/default_runtime_seg.py'
]
model = dict(backbone=dict(type='SegConvMLPMedium'))
