"""ConvMLP: the model (:mod:`src.convmlp`), its weights (:mod:`src.weights`, :mod:`src.zoo`, :mod:`src.fuse`)
and thin registrations into timm (:mod:`src.classification`), mmdet (:mod:`src.detection`) and mmseg
(:mod:`src.segmentation`), each imported on demand. Around them, one folder per concern: classification
training (:mod:`src.train`), the OpenMMLab runtime (:mod:`src.mm`), deployment (:mod:`src.deploy`),
speed and size (:mod:`src.perf`), what the model looks at (:mod:`src.explain`), the small studies
(:mod:`src.studies`) and shared utilities (:mod:`src.utils`). docs/layout.md names every module."""
from .convmlp import ConvMLP, convmlp_l, convmlp_m, convmlp_s

__all__ = ['ConvMLP', 'convmlp_s', 'convmlp_m', 'convmlp_l']
