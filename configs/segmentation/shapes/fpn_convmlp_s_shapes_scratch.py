# Transfer in miniature (`make transfer`, tools/transfer.py), the from-scratch side: Semantic FPN-S on the
# generated scenes with the transfer schedule. Its *_pretrained.py twin differs only in the backbone's
# init_cfg (the ConvMLP-S pretrained on the shapes crops by classification.py).
_base_ = './fpn_convmlp_s_shapes.py'
max_iters = 400
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=50)     # eight points of the validation curve
default_hooks = dict(checkpoint=dict(interval=max_iters))
