# The generated shapes in ADE20K layout (`python tools/make_shapes.py ROOT` writes ROOT/ade): 4 classes
# (background, circle, square, triangle) after reduce_zero_label (label 0 = shape outlines, ignored).
# ade20k.py's pipeline at the scenes' scale: a whole 128x96 scene, rescaled 0.8-1.25x, cropped to 128x96
# (ADE20K's 0.5-2x and a 96x96 crop cut the large shapes, and a part of one is any shape: the transfer
# Semantic FPN-S plateaued near mIoU 51 that way and passes 80 this way, with longer pretraining too).
_base_ = './ade20k.py'
dataset_type = 'BaseSegDataset'
data_root = 'data/shapes/ade'
crop_size = (96, 128)  # (h, w)
metainfo = dict(classes=('background', 'circle', 'square', 'triangle'),
                palette=[(0, 0, 0), (220, 20, 60), (0, 130, 200), (255, 180, 0)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 96), ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
_shapes = dict(type=dataset_type, data_root=data_root, metainfo=metainfo, reduce_zero_label=True,
               img_suffix='.jpg', seg_map_suffix='.png')
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(**_shapes, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(**_shapes, pipeline=test_pipeline))
test_dataloader = val_dataloader
