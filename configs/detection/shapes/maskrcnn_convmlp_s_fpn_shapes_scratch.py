# Transfer in miniature (`make transfer`, tools/transfer.py), the from-scratch side: Mask R-CNN-S on the
# generated scenes with the transfer schedule (as retinanet_convmlp_s_fpn_shapes_scratch.py). Its
# *_pretrained.py twin differs only in the backbone's init_cfg (the ConvMLP-S pretrained on the shapes
# crops by classification.py).
_base_ = './maskrcnn_convmlp_s_fpn_shapes.py'
image_scale = (128, 96)  # the transfer scenes' own size (their shapes are large enough not to upscale)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=1)    # one point of the validation curve per epoch
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[5], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=0.0002))
# at most 4 objects a scene: 32 sampled RoIs per image (<= 8 positives for the mask head) instead of the
# demo's 128 (<= 32), which made a step 6 s, the mask head's 4 convolutions on every positive RoI dominating
model = dict(train_cfg=dict(rcnn=dict(sampler=dict(num=32))))
default_hooks = dict(checkpoint=dict(interval=max_epochs))
