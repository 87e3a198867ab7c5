"""The model zoo in one place: release URLs and the paper's numbers (arXiv 2109.04454).

The README table (:func:`markdown_table`, printed by ``tools/zoo_table.py``), timm's pretrained configs
and tools/complexity.py all read from here.

The release host has moved once already. Point every URL at a mirror, or a local folder laid out like
the release's ``checkpoints/`` directory, without code changes::

    export CONVMLP_WEIGHTS_BASE=https://my.mirror/convmlp/checkpoints   # or /data/convmlp_checkpoints
"""
from __future__ import annotations

import os
from typing import Optional

RELEASE_BASE = 'https://shi-labs.com/projects/convmlp/checkpoints'
BASE_ENV = 'CONVMLP_WEIGHTS_BASE'

VARIANTS = ('convmlp_s', 'convmlp_m', 'convmlp_l')

# ImageNet-1k: top-1, params (M), MACs at 224 (G).
IMAGENET = {
    'convmlp_s': dict(top1=76.8, params=9.0, macs=2.4),
    'convmlp_m': dict(top1=79.0, params=17.4, macs=3.9),
    'convmlp_l': dict(top1=80.2, params=42.7, macs=9.9),
}

# The same at the release's precision (fvcore's count): params in M, MACs at 224 in G.
IMAGENET_PRECISE = {
    'convmlp_s': dict(params=9.02, macs=2.399),
    'convmlp_m': dict(params=17.41, macs=3.948),
    'convmlp_l': dict(params=42.73, macs=9.904),
}

NAMES = {'convmlp_s': 'ConvMLP-S', 'convmlp_m': 'ConvMLP-M', 'convmlp_l': 'ConvMLP-L'}
DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'flowers102': 'Flowers-102'}

# Fine-tuned from ImageNet: dataset -> variant -> (top-1, params in M).
FINETUNED = {
    'cifar10': {'convmlp_s': (98.0, 8.51), 'convmlp_m': (98.6, 16.90), 'convmlp_l': (98.6, 41.97)},
    'cifar100': {'convmlp_s': (87.4, 8.56), 'convmlp_m': (89.1, 16.95), 'convmlp_l': (88.6, 42.04)},
    'flowers102': {'convmlp_s': (99.5, 8.56), 'convmlp_m': (99.5, 16.95), 'convmlp_l': (99.5, 42.04)},
}
FINETUNED_CLASSES = {'cifar10': 10, 'cifar100': 100, 'flowers102': 102}

# COCO 1x: variant -> metrics; params in M.
MASKRCNN = {
    'convmlp_s': dict(box=(38.4, 59.8, 41.8), mask=(35.7, 56.7, 38.2), params=28.7),
    'convmlp_m': dict(box=(40.6, 61.7, 44.5), mask=(37.2, 58.8, 39.8), params=37.1),
    'convmlp_l': dict(box=(41.7, 62.8, 45.5), mask=(38.2, 59.9, 41.1), params=62.2),
}
RETINANET = {
    'convmlp_s': dict(box=(37.2, 56.4, 39.8), params=18.7),
    'convmlp_m': dict(box=(39.4, 58.7, 42.0), params=27.1),
    'convmlp_l': dict(box=(40.2, 59.3, 43.3), params=52.9),
}
# ADE20K Semantic FPN: mIoU, params in M.
SEMANTIC_FPN = {
    'convmlp_s': dict(miou=35.8, params=12.8),
    'convmlp_m': dict(miou=38.6, params=21.1),
    'convmlp_l': dict(miou=40.0, params=46.3),
}

# Config (relative to the repository root) of each detection / segmentation checkpoint.
CONFIGS = {
    **{f'{det}_{v}_coco': f'configs/detection/{det}_{v}_fpn_1x_coco.py' for det in ('maskrcnn', 'retinanet')
       for v in VARIANTS},
    **{f'sem_fpn_{v}_ade20k': f'configs/segmentation/fpn_{v}_512x512_40k_ade20k.py' for v in VARIANTS},
}

# File names of the release, relative to its checkpoints/ folder.
_FILES = {
    **{v: f'{v}_imagenet.pth' for v in VARIANTS},
    **{f'{v}_{d}': f'{v}_{d}.pth' for v in VARIANTS for d in FINETUNED},
    **{f'{det}_{v}_coco': f'detection/{det}_{v}_coco.pth' for det in ('maskrcnn', 'retinanet')
       for v in VARIANTS},
    **{f'sem_fpn_{v}_ade20k': f'segmentation/sem_fpn_{v}_ade20k.pth' for v in VARIANTS},
}

# SHA-256 of released files, where known; downloads of these are verified.
SHA256: dict = {}


def weight_names() -> list:
    """Every checkpoint name :func:`weight_url` knows."""
    return sorted(_FILES)


def weight_url(name: str, base: Optional[str] = None) -> str:
    """URL (or local path, under a local ``CONVMLP_WEIGHTS_BASE``) of a released checkpoint by name,
    e.g. ``convmlp_s`` (ImageNet), ``convmlp_s_cifar10``, ``retinanet_convmlp_s_coco``. ``base``
    overrides ``CONVMLP_WEIGHTS_BASE`` and the release host."""
    if name not in _FILES:
        import difflib
        close = difflib.get_close_matches(name, _FILES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f'; known: {", ".join(sorted(_FILES))}'
        raise KeyError(f'unknown ConvMLP checkpoint {name!r}{hint}')
    base = base or os.environ.get(BASE_ENV) or RELEASE_BASE
    return f'{base.rstrip("/")}/{_FILES[name]}'


def _link(name: str) -> str:
    url = weight_url(name, base=RELEASE_BASE)  # the README names the release, whatever the environment
    return f'[{url.rsplit("/", 1)[-1]}]({url})'


def _triple(values) -> str:
    return ' / '.join(f'{v:.1f}' for v in values)


def markdown_table() -> str:
    """The README's model zoo: every released checkpoint with the paper's numbers, as Markdown."""
    from .utils.markdown import table
    imagenet = table(
        ['Model', 'timm name', 'Params', 'MACs @224', 'Top-1', 'Weights'],
        [[NAMES[v], f'`{v}`', f'{IMAGENET[v]["params"]:.1f}M', f'{IMAGENET[v]["macs"]:.1f}G',
          f'{IMAGENET[v]["top1"]:.1f}', _link(v)] for v in VARIANTS], align='llrrrl')
    finetuned = table(
        ['Model', 'Dataset', 'Classes', 'Params', 'Top-1', 'Weights'],
        [[NAMES[v], DATASET_NAMES[d], FINETUNED_CLASSES[d], f'{FINETUNED[d][v][1]:.2f}M',
          f'{FINETUNED[d][v][0]:.1f}', _link(f'{v}_{d}')] for d in FINETUNED for v in VARIANTS],
        align='llrrrl')
    coco = table(
        ['Detector', 'Backbone', 'Params', 'Box AP / AP50 / AP75', 'Mask AP / AP50 / AP75', 'Config',
         'Weights'],
        [[det_name, NAMES[v], f'{metrics[v]["params"]:.1f}M', _triple(metrics[v]['box']),
          _triple(metrics[v]['mask']) if 'mask' in metrics[v] else '-',
          f'`{CONFIGS[f"{det}_{v}_coco"]}`', _link(f'{det}_{v}_coco')]
         for det, det_name, metrics in (('maskrcnn', 'Mask R-CNN', MASKRCNN), ('retinanet', 'RetinaNet', RETINANET))
         for v in VARIANTS], align='llrrrll')
    ade = table(
        ['Segmentor', 'Backbone', 'Params', 'mIoU', 'Config', 'Weights'],
        [['Semantic FPN', NAMES[v], f'{SEMANTIC_FPN[v]["params"]:.1f}M', f'{SEMANTIC_FPN[v]["miou"]:.1f}',
          f'`{CONFIGS[f"sem_fpn_{v}_ade20k"]}`', _link(f'sem_fpn_{v}_ade20k')] for v in VARIANTS],
        align='llrrll')
    return '\n\n'.join([
        '**ImageNet-1k** (224x224; MACs counted as fvcore counts them)', imagenet,
        '**Fine-tuned from ImageNet-1k** (224x224)', finetuned,
        '**COCO 2017** (1x schedule, 12 epochs)', coco,
        '**ADE20K** (Semantic FPN, 512x512, 40k iterations, single-scale mIoU)', ade,
    ])
