"""ConvMLP as an OpenMMLab 2.0 backbone (shared by :mod:`src.detection` and :mod:`src.segmentation`).

:class:`DenseConvMLP` *is* a :class:`~src.convmlp.ConvMLP` built with ``classifier_head=False`` (so its
state-dict keys are the release's ``tokenizer.*``, ``conv_stages.*``, ``stages.*``: a detector's keys
are ``backbone.tokenizer...`` exactly as in the released COCO/ADE20K checkpoints), plus mmengine's
``init_cfg``/``init_weights`` protocol:

    backbone=dict(type='DetConvMLPSmall', init_cfg=dict(type='Pretrained'))               # release weights
    backbone=dict(type='DetConvMLPSmall', init_cfg=dict(type='Pretrained', checkpoint=URL_or_path))
    backbone=dict(type='DetConvMLPSmall', init_cfg=None)                                  # random init

``forward`` maps (B, 3, H, W) to a tuple of four contiguous NCHW maps at strides 4, 8, 16, 32 with channels
``(C, d0, d1, d2)``: S/M (64, 128, 256, 512), L (96, 192, 384, 768).

Pretrained weights load through :func:`src.weights.load_pretrained` (checked download,
``weights_only=True``, wrappers unwrapped, ``norm``/``head`` dropped) and must cover *every* backbone
key with the right shape: a partial load raises instead of silently training from scratch.
"""
from __future__ import annotations

from typing import Optional, Tuple, Type

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule

from ..convmlp import ARCHS, ConvMLP
from ..weights import load_pretrained

__all__ = ['DenseConvMLP', 'VARIANTS', 'make_backbones']

# class-name suffix -> architecture of src.convmlp.ARCHS
VARIANTS = {'Small': 'convmlp_s', 'Medium': 'convmlp_m', 'Large': 'convmlp_l'}


class DenseConvMLP(ConvMLP, BaseModule):
    """ConvMLP backbone without classifier head, returning the four dense-prediction maps.

    Args:
        arch: key of :data:`src.convmlp.ARCHS` (set by the registered subclasses).
        drop_path_rate: stochastic depth of the MLP stages (per stage, linearly from 0).
        tokenizer, conv_stage, downsample, connect: the ablation's switches of :class:`~src.convmlp.ConvMLP`
            (defaults: the release); e.g. the Pure-MLP baseline is ``tokenizer='patch', conv_stage=False,
            downsample='patch_merge', connect=False``. Every setting gives the four maps at strides 4..32.
        init_cfg: ``None`` (random init) or ``dict(type='Pretrained', checkpoint=...)`` where checkpoint
            is a zoo name, URL or local path; without ``checkpoint``, the release's ImageNet weights of
            this variant (``CONVMLP_WEIGHTS_BASE`` points them at a mirror).
    """
    arch: str = 'convmlp_s'

    def __init__(self, drop_path_rate: float = 0.1, tokenizer: str = 'conv', conv_stage: bool = True,
                 downsample: str = 'conv', connect: bool = True, init_cfg: Optional[dict] = None):
        if init_cfg is not None and init_cfg.get('type') != 'Pretrained':
            raise ValueError(f"{type(self).__name__} supports init_cfg=None or dict(type='Pretrained', "
                             f'checkpoint=...); got {init_cfg}')
        super().__init__(**ARCHS[self.arch], classifier_head=False, drop_path_rate=drop_path_rate,
                         tokenizer=tokenizer, conv_stage=conv_stage, downsample=downsample, connect=connect)
        self.init_cfg = dict(init_cfg) if init_cfg is not None else None
        self.out_channels = tuple(f['num_chs'] for f in self.feature_info)

    def init_weights(self) -> None:
        """Load the pretrained weights named by ``init_cfg`` (the constructor already initialised the rest)."""
        if self.init_cfg is not None and not self._is_init:
            source = self.init_cfg.get('checkpoint') or self.arch
            load_pretrained(self, source, progress=True)
            print_log(f'{type(self).__name__}: loaded all {len(self.state_dict())} backbone tensors '
                      f'from {source}', logger='current')
        self._is_init = True

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> 4 contiguous NCHW maps (B, C_i, H/s_i, W/s_i), s = 4, 8, 16, 32.

        The model computes channels-last; the maps are made contiguous here because mmcv's compiled ops
        index raw NCHW memory: its RoIAlign (Mask R-CNN's RoI heads) silently reads a channels-last FPN
        output as scrambled features, and the two-stage heads then learn nothing."""
        return tuple(m.contiguous() for m in self.forward_dense(x))


def make_backbones(prefix: str, registry, module: str) -> Tuple[Type[DenseConvMLP], ...]:
    """Register ``{prefix}Small/Medium/Large`` subclasses of :class:`DenseConvMLP` in ``registry``;
    ``module`` is the name of the module that binds them (so they pickle by name)."""
    classes = []
    for suffix, arch in VARIANTS.items():
        name = f'{prefix}{suffix}'
        cls = type(name, (DenseConvMLP,), dict(
            arch=arch, __module__=module,
            __doc__=f'{arch} dense backbone, registered as ``{name}`` in the {registry.scope} MODELS '
                    f'registry: see :class:`src.mm.backbone.DenseConvMLP`.'))
        registry.register_module(name=name, module=cls)
        classes.append(cls)
    return tuple(classes)
