# Detection "1x" of the release: 12 epochs, AdamW lr 1e-4, weight decay 1e-4, no gradient clipping,
# linear warmup over 500 iterations from 0.001x, lr x0.1 after epochs 8 and 11.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, weight_decay=0.0001, fused=True),  # one kernel, not a loop
    clip_grad=None)

# 8 GPUs x 2 images; `train.py --auto-scale-lr` scales lr linearly to another total batch size
auto_scale_lr = dict(enable=False, base_batch_size=16)
