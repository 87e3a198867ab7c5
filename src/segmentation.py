"""Registers the ConvMLP backbone in mmsegmentation 1.x: ``SegConvMLPSmall/Medium/Large`` in mmseg's MODELS.

Configs load it with ``custom_imports = dict(imports=['src.segmentation'], allow_failed_imports=False)``.
The backbone returns the four maps of :class:`src.mm.backbone.DenseConvMLP` (strides 4..32).
"""
from mmseg.registry import MODELS

from .mm.backbone import make_backbones

__all__ = ['SegConvMLPSmall', 'SegConvMLPMedium', 'SegConvMLPLarge']

SegConvMLPSmall, SegConvMLPMedium, SegConvMLPLarge = make_backbones('SegConvMLP', MODELS, __name__)
