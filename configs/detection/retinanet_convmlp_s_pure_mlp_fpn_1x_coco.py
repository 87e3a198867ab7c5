# RetinaNet on the Pure-MLP baseline of ConvMLP-S (the ablation's first row; other rows and switch combinations:
# tokenizer / conv_stage / downsample / connect, see src/mm/backbone.py). No released weights for this row: the backbone
# starts from scratch unless --cfg-options model.backbone.init_cfg="dict(type='Pretrained', checkpoint=PATH)" names
# your own ImageNet run of configs/classification/convmlp_s_pure_mlp_imagenet.yml.
_base_ = './retinanet_convmlp_s_fpn_1x_coco.py'
model = dict(backbone=dict(tokenizer='patch', conv_stage=False, downsample='patch_merge', connect=False, init_cfg=None))
