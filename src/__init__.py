"""ConvMLP: the model (:mod:`src.convmlp`), its weights (:mod:`src.weights`, :mod:`src.zoo`) and thin
registrations into timm (:mod:`src.classification`), mmdet (:mod:`src.detection`) and mmseg
(:mod:`src.segmentation`), each imported on demand."""
from .convmlp import ConvMLP, convmlp_l, convmlp_m, convmlp_s

__all__ = ['ConvMLP', 'convmlp_s', 'convmlp_m', 'convmlp_l']
