"""Registers ConvMLP in timm: ``import src.classification`` then ``timm.create_model('convmlp_s', ...)``.

Names: ``convmlp_s/m/l`` and the release's ``convmlp_{s,m,l}_classification``. Pretrained weights come
through :mod:`src.weights` (checked download, ``weights_only=True``, wrappers unwrapped) and are handed to
timm's loader, which drops the head when ``num_classes`` differs. ``features_only=True`` returns the four
dense-prediction maps (``out_indices`` 0..3: strides 4, 8, 16, 32).
"""
from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from . import zoo
from .convmlp import ARCHS, ConvMLP
from .weights import adapt_state_dict, load_state_dict

__all__ = ['PRETRAINED_CFGS']


def _cfg(variant: str) -> dict:
    return dict(
        url=zoo.weight_url(variant), num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7),
        crop_pct=0.9, interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv='tokenizer.block.0', classifier='head', license='apache-2.0',
        paper_ids='arXiv:2109.04454', paper_name='ConvMLP: Hierarchical Convolutional MLPs for Vision',
        origin_url='https://github.com/SHI-Labs/Convolutional-MLPs')


PRETRAINED_CFGS = {f'{name}.in1k': _cfg(arch) for arch in ARCHS
                   for name in (arch, f'{arch}_classification')}
default_cfgs = generate_default_cfgs(PRETRAINED_CFGS)


def _create(variant: str, arch: str, pretrained: bool = False, **kwargs) -> ConvMLP:
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    overlay.setdefault('url', zoo.weight_url(arch))  # read at call time: CONVMLP_WEIGHTS_BASE applies
    if pretrained and 'state_dict' not in overlay:
        sd = load_state_dict(overlay.pop('file', None) or overlay['url'], progress=True)
        # the checkpoint's own class count: timm keeps its head when num_classes matches, drops it if not
        overlay['state_dict'] = sd
        overlay['num_classes'] = sd['head.weight'].shape[0] if 'head.weight' in sd else 0
    model = build_model_with_cfg(
        ConvMLP, variant, pretrained, pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=lambda sd, model: adapt_state_dict(model, sd),
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)),
        **ARCHS[arch], **kwargs)
    model.pretrained_cfg.pop('state_dict', None)
    return model


@register_model
def convmlp_s(pretrained: bool = False, **kwargs) -> ConvMLP:
    return _create('convmlp_s', 'convmlp_s', pretrained, **kwargs)


@register_model
def convmlp_m(pretrained: bool = False, **kwargs) -> ConvMLP:
    return _create('convmlp_m', 'convmlp_m', pretrained, **kwargs)


@register_model
def convmlp_l(pretrained: bool = False, **kwargs) -> ConvMLP:
    return _create('convmlp_l', 'convmlp_l', pretrained, **kwargs)


@register_model
def convmlp_s_classification(pretrained: bool = False, **kwargs) -> ConvMLP:
    return _create('convmlp_s_classification', 'convmlp_s', pretrained, **kwargs)


@register_model
def convmlp_m_classification(pretrained: bool = False, **kwargs) -> ConvMLP:
    return _create('convmlp_m_classification', 'convmlp_m', pretrained, **kwargs)


@register_model
def convmlp_l_classification(pretrained: bool = False, **kwargs) -> ConvMLP:
    return _create('convmlp_l_classification', 'convmlp_l', pretrained, **kwargs)
