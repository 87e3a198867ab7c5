# Transfer in miniature: fpn_convmlp_s_shapes_scratch.py with the backbone initialised from the
# classification run on the shapes crops (tools/transfer.py writes it there; point elsewhere with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH, as for an ImageNet file). Every key must load.
_base_ = './fpn_convmlp_s_shapes_scratch.py'
model = dict(backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='work_dirs/transfer/pretrain/best.pth.tar')))
