# Transfer in miniature (`make transfer`, tools/transfer.py), the from-scratch side: Mask R-CNN-S on the
# generated scenes with the transfer schedule. Its *_pretrained.py twin differs only in the backbone's
# init_cfg (the ConvMLP-S pretrained on the shapes crops by classification.py).
_base_ = './maskrcnn_convmlp_s_fpn_shapes.py'
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=1)    # one point of the validation curve per epoch
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[6], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=0.0002))
default_hooks = dict(checkpoint=dict(interval=max_epochs))
