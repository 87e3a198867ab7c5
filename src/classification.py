"""Registers ConvMLP in timm: ``import src.classification`` then ``timm.create_model('convmlp_s', ...)``.

Names (:data:`MODELS`): ``convmlp_s/m/l``, the release's ``convmlp_{s,m,l}_classification``, and the
ablation rows ``convmlp_{s,m,l}_{pure_mlp,conv_stage,conv_downsample}`` (:data:`src.convmlp.ABLATION`;
keyword arguments override any switch). Pretrained weights come
through :mod:`src.weights` (checked download, ``weights_only=True``, wrappers unwrapped) and are handed to
timm's loader, which drops the head when ``num_classes`` differs. ``features_only=True`` returns the four
dense-prediction maps (``out_indices`` 0..3: strides 4, 8, 16, 32).
"""
from __future__ import annotations

from typing import Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from . import zoo
from .convmlp import ABLATION, ARCHS, ConvMLP
from .weights import adapt_state_dict, load_state_dict

__all__ = ['MODELS', 'PRETRAINED_CFGS']


def _cfg(url: str = '', first_conv: str = 'tokenizer.block.0') -> dict:
    return dict(
        url=url, num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7),
        crop_pct=0.9, interpolation='bicubic', mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv=first_conv, classifier='head', license='apache-2.0',
        paper_ids='arXiv:2109.04454', paper_name='ConvMLP: Hierarchical Convolutional MLPs for Vision',
        origin_url='https://github.com/SHI-Labs/Convolutional-MLPs')


# model name -> (architecture of ARCHS, ablation switches): the release's names, its
# ``*_classification`` aliases, and every row of the ablation (no released weights)
MODELS = {
    **{name: (arch, {}) for arch in ARCHS for name in (arch, f'{arch}_classification')},
    **{f'{arch}_{row}': (arch, switches) for arch in ARCHS for row, switches in ABLATION.items()},
}
PRETRAINED_CFGS = {
    **{f'{name}.in1k': _cfg(zoo.weight_url(arch)) for name, (arch, switches) in MODELS.items() if not switches},
    **{name: _cfg(first_conv='tokenizer.proj' if switches['tokenizer'] == 'patch' else 'tokenizer.block.0')
       for name, (arch, switches) in MODELS.items() if switches},
}
default_cfgs = generate_default_cfgs(PRETRAINED_CFGS)


def _create(variant: str, pretrained: bool = False, **kwargs) -> ConvMLP:
    arch, switches = MODELS[variant]
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    if not switches:
        overlay.setdefault('url', zoo.weight_url(arch))  # read at call time: CONVMLP_WEIGHTS_BASE applies
    cfg = kwargs.get('pretrained_cfg')
    external = isinstance(cfg, dict) and cfg.get('source') in ('local-dir', 'hf-hub')  # timm reads these itself
    if pretrained and not external and 'state_dict' not in overlay:
        source = overlay.pop('file', None) or overlay.get('url')
        if not source:
            raise ValueError(f'no released weights for {variant} (an ablation row): pass '
                             f'pretrained_cfg_overlay=dict(file=PATH) or checkpoint_path=PATH')
        sd = load_state_dict(source, progress=True)
        # the checkpoint's own class count: timm keeps its head when num_classes matches, drops it if not
        overlay['state_dict'] = sd
        overlay['num_classes'] = sd['head.weight'].shape[0] if 'head.weight' in sd else 0
    model = build_model_with_cfg(
        ConvMLP, variant, pretrained, pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=lambda sd, model: adapt_state_dict(model, sd),
        feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)),
        **ARCHS[arch], **{**switches, **kwargs})
    model.pretrained_cfg.pop('state_dict', None)
    return model


def _entrypoint(variant: str) -> Callable[..., ConvMLP]:
    """The timm entry point ``variant(pretrained=False, **kwargs)`` (kwargs: any ConvMLP argument)."""
    def entrypoint(pretrained: bool = False, **kwargs) -> ConvMLP:
        return _create(variant, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = variant
    entrypoint.__module__ = __name__
    return entrypoint


for _name in MODELS:
    globals()[_name] = register_model(_entrypoint(_name))
