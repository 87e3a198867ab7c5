"""Registers the ConvMLP backbone in mmdetection 3.x: ``DetConvMLPSmall/Medium/Large`` in mmdet's MODELS.

Configs load it with ``custom_imports = dict(imports=['src.detection'], allow_failed_imports=False)``.
The backbone returns the four maps of :class:`src.mm.backbone.DenseConvMLP` (strides 4..32).
"""
from mmdet.registry import MODELS

from .mm.backbone import make_backbones

__all__ = ['DetConvMLPSmall', 'DetConvMLPMedium', 'DetConvMLPLarge']

DetConvMLPSmall, DetConvMLPMedium, DetConvMLPLarge = make_backbones('DetConvMLP', MODELS, __name__)
