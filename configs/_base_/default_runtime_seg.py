# mmsegmentation runtime; `custom_imports` registers the SegConvMLP backbones, so the config alone
# builds the model (run from the repository root, or put it on PYTHONPATH).
custom_imports = dict(imports=['src.segmentation'], allow_failed_imports=False)
default_scope = 'mmseg'

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # the entry points switch to gloo on CPU
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
