# Short detection schedule for the shapes demo: adamw_1x.py's optimizer and steps over 12 short epochs,
# 50 warmup iterations, lr 4e-4 (the backbone starts from scratch there).
_base_ = './adamw_1x.py'
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=0.0004))
