"""Parameters and MACs of ConvMLP: the paper's figure beside the one measured on this code, as Markdown.

    python tools/complexity.py                                  # the paper's table (S/M/L, heads, det/seg)
    python tools/complexity.py --model convmlp_m --img-size 512x1024
    python tools/complexity.py --model convmlp_l --num-classes 100
    python tools/complexity.py --model resnet50                 # any timm model
    python tools/complexity.py --skip-dense                     # without the mmdet / mmseg models
    python tools/complexity.py --ablation                       # every row of the ablation, S/M/L

MACs are counted as fvcore counts them (src/perf/flops.py; one multiply-add = 1, BatchNorm and LayerNorm
included). The paper's figure is marked ✓ when the measurement rounds to it, ✓ 2-step when it does after
rounding to one more decimal first, and ✗ where they differ by more than rounding. Models are built with random weights: nothing is downloaded, no GPU is needed.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from src import zoo  # noqa: E402
from src.model_options import parse_size  # noqa: E402
from src.utils.errors import fail  # noqa: E402
from src.perf.flops import count_macs, count_params  # noqa: E402
from src.utils.markdown import table  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

MARKS = ('✓', '✓ 2-step', '✗ differs')  # best to worst; a row shows its worst
HEADERS = ['Model', 'Input', 'Params (paper)', 'Params (measured)', 'MACs (paper)', 'MACs (measured)', 'Agrees']
ALIGN = 'llrrrrl'


def mark(measured: float, paper: float, decimals: int) -> str:
    """How ``measured`` relates to the paper's figure, given with ``decimals`` decimals: ``✓`` it rounds to
    it; ``✓ 2-step`` it does when rounded to one more decimal first, either way at the tie (37.0475 ->
    37.05 -> 37.1 and 8.51505 -> 8.515 -> 8.51, as the paper has them); ``✗ differs`` otherwise."""
    if abs(round(measured, decimals) - paper) < 0.1 * 10 ** -decimals:
        return MARKS[0]
    if abs(round(measured, decimals + 1) - paper) <= 0.5 * 10 ** -decimals + 1e-9:
        return MARKS[1]
    return MARKS[2]


def agrees(measured: float, paper: float, decimals: int) -> bool:
    """The measurement equals the paper's figure up to its rounding (:func:`mark` is not ``✗``)."""
    return mark(measured, paper, decimals) != MARKS[2]


def _worst(marks: Sequence[str]) -> str:
    return max(marks, key=MARKS.index) if marks else ''


def _fmt(value: float, decimals: int, unit: str) -> str:
    return f'{value:.{decimals}f}{unit}'


def _paper(value: float, decimals: int, unit: str, precise: Optional[float] = None) -> str:
    text = _fmt(value, decimals, unit)
    return f'{text} ({precise}{unit})' if precise is not None else text


def _build(name: str, num_classes: Optional[int]) -> nn.Module:
    """A ConvMLP variant (src/convmlp.py) or any timm model, random weights."""
    from src import convmlp
    kwargs = {} if num_classes is None else dict(num_classes=num_classes)
    if name in convmlp.ARCHS or name in convmlp.ABLATION_MODELS:
        return getattr(convmlp, name)(**kwargs)
    import timm
    import src.classification  # noqa: F401  registers convmlp_* in timm (e.g. *_classification aliases)
    if not timm.is_model(name):
        import difflib
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        fail(f'unknown model {name!r}' + (f"; did you mean '{close[0]}'?" if close else
                                          ': give a ConvMLP variant (convmlp_s/m/l) or a timm model name'))
    return timm.create_model(name, pretrained=False, **kwargs)


def measure(model: nn.Module, size: Tuple[int, int]) -> Tuple[int, int]:
    """(parameters, MACs of one image of ``size`` = (H, W))."""
    return count_params(model), count_macs(model, torch.zeros(1, 3, *size)).total


def paper_params(name: str, num_classes: int) -> Optional[Tuple[float, int]]:
    """The paper's parameter count of ConvMLP ``name`` with ``num_classes`` classes, in M, and its decimals."""
    if name in zoo.IMAGENET and num_classes == 1000:
        return zoo.IMAGENET[name]['params'], 1
    for dataset, classes in zoo.FINETUNED_CLASSES.items():
        if classes == num_classes and name in zoo.FINETUNED[dataset]:
            return zoo.FINETUNED[dataset][name][1], 2
    return None


def model_row(name: str, size: Tuple[int, int], num_classes: Optional[int] = None,
              model: Optional[nn.Module] = None) -> List[str]:
    """One table row for ``model`` (built from ``name`` and ``num_classes`` if not given); the paper's
    figures where it has them (ConvMLP; MACs at 224x224 with 1000 classes)."""
    model = model if model is not None else _build(name, num_classes)
    params, macs = measure(model, size)
    classes = getattr(model, 'num_classes', None)
    label = zoo.NAMES.get(name, name) + (f' ({classes} classes)' if classes not in (None, 1000) else '')
    row = [label, f'{size[0]}x{size[1]}']
    marks = []
    paper = paper_params(name, classes)
    if paper:
        precise = zoo.IMAGENET_PRECISE[name]['params'] if paper[1] == 1 else None
        row += [_paper(paper[0], paper[1], 'M', precise), _fmt(params / 1e6, 3, 'M')]
        marks.append(mark(params / 1e6, *paper))
    else:
        row += ['-', _fmt(params / 1e6, 3, 'M')]
    if name in zoo.IMAGENET and classes == 1000 and size == (224, 224):
        paper_macs, precise = zoo.IMAGENET[name]['macs'], zoo.IMAGENET_PRECISE[name]['macs']
        row.append(_paper(paper_macs, 1, 'G', precise))
        marks += [mark(macs / 1e9, paper_macs, 1), mark(macs / 1e9, precise, 3)]
    else:
        row.append('-')
    row.append(_fmt(macs / 1e9, 3, 'G'))
    return row + [_worst(marks)]


def finetuned_rows(models: Dict[str, nn.Module]) -> List[List[str]]:
    """ConvMLP with the fine-tuned heads (10 / 100 / 102 classes): parameters against the paper's.
    ``models`` maps each variant to its ImageNet model, whose classifier is reset here (as fine-tuning
    does)."""
    rows = []
    for dataset, per_variant in zoo.FINETUNED.items():
        classes = zoo.FINETUNED_CLASSES[dataset]
        for variant, (_, paper) in per_variant.items():
            models[variant].reset_classifier(classes)
            params = count_params(models[variant]) / 1e6
            rows.append([f'{zoo.NAMES[variant]} {zoo.DATASET_NAMES[dataset]} ({classes} classes)', '224x224',
                         _fmt(paper, 2, 'M'), _fmt(params, 3, 'M'), '-', '-',
                         mark(params, paper, 2)])
    return rows


def build_from_config(config: Path) -> nn.Module:
    """An mmdet / mmseg model from its config (custom_imports register the ConvMLP backbone); weights are
    not initialised from any checkpoint, so nothing is downloaded."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(str(config))  # imports the config's custom_imports
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    with warnings.catch_warnings():  # mmseg's notes on its loss defaults say nothing about the size
        warnings.simplefilter('ignore', UserWarning)
        return MODELS.build(cfg.model)


DENSE = (('maskrcnn_{}_coco', 'Mask R-CNN', 'mmdet', zoo.MASKRCNN),
         ('retinanet_{}_coco', 'RetinaNet', 'mmdet', zoo.RETINANET),
         ('sem_fpn_{}_ade20k', 'Semantic FPN', 'mmseg', zoo.SEMANTIC_FPN))


def _first_line(e: BaseException) -> str:
    return f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'


def dense_rows() -> Tuple[List[List[str]], List[str]]:
    """The nine detection / segmentation models built from their configs: parameters against the paper's.
    Returns the rows and notes on what could not be built (OpenMMLab missing, config missing or broken)."""
    rows, notes = [], []
    for pattern, kind, package, paper_table in DENSE:
        try:
            __import__(package)
            missing = None
        except ImportError as e:
            missing = e
            notes.append(f'{kind}: not available, {package} does not import ({_first_line(e)}): install '
                         f'requirements/openmmlab.txt (make install)')
        for variant in zoo.VARIANTS:
            config = ROOT / zoo.CONFIGS[pattern.format(variant)]
            label = f'{kind} + {zoo.NAMES[variant]}'
            paper = paper_table[variant]['params']
            try:
                if missing:
                    raise missing
                if not config.is_file():
                    raise FileNotFoundError(f'no config {config.relative_to(ROOT)}')
                params = count_params(build_from_config(config)) / 1e6
            except Exception as e:  # any config / registry problem: report it in the table, keep going
                rows.append([label, '-', _fmt(paper, 1, 'M'), 'not available', '-', '-', ''])
                if e is not missing:
                    notes.append(f'{label}: not available ({_first_line(e)})')
                continue
            rows.append([label, '-', _fmt(paper, 1, 'M'), _fmt(params, 2, 'M'), '-', '-',
                         mark(params, paper, 1)])
    return rows, notes


def paper_table(skip_dense: bool = False) -> str:
    """The full comparison: S/M/L at 224, the fine-tuned heads and (unless skipped) det/seg models."""
    models = {v: _build(v, None) for v in zoo.VARIANTS}
    rows = [model_row(v, (224, 224), model=models[v]) for v in zoo.VARIANTS] + finetuned_rows(models)
    notes = []
    if not skip_dense:
        dense, notes = dense_rows()
        rows += dense
    out = table(HEADERS, rows, ALIGN)
    legend = (f'\n\n{MARKS[0]}: the measurement rounds to the paper\'s figure; {MARKS[1]}: it does when '
              f'rounded to one more decimal first (37.0475M -> 37.05M -> 37.1M); {MARKS[2]}: it does not. '
              'Paper figures in brackets are the release\'s 3-digit values. MACs as fvcore counts them.')
    return out + legend + ('\n\n' + '\n'.join(f'- {n}' for n in notes) if notes else '')


ABLATION_HEADERS = ['Model', 'Ablation row', 'Name', 'Tokenizer', 'Conv stage', 'Downsampling', 'Depthwise conv',
                    'Params', 'MACs @224']


def ablation_table() -> str:
    """Params and MACs at 224x224 (1000 classes) of every row of the ablation, S, M and L, in one table:
    the Pure-MLP baseline, + conv stage, + conv downsampling, + depthwise conv (ConvMLP)."""
    import inspect

    from src.convmlp import ABLATION, ABLATION_TITLES, ConvMLP
    release = {k: p.default for k, p in inspect.signature(ConvMLP).parameters.items() if k in ABLATION['pure_mlp']}
    words = {('tokenizer', 'conv'): 'conv', ('tokenizer', 'patch'): '4x4 patch', ('downsample', 'conv'): '3x3/2 conv',
             ('downsample', 'patch_merge'): 'patch merge'}
    rows = []
    for arch in zoo.VARIANTS:
        for row in (*ABLATION, ''):
            name = f'{arch}_{row}' if row else arch
            switches = ABLATION.get(row, release)
            params, macs = measure(_build(name, None), (224, 224))
            rows.append([zoo.NAMES[arch], ABLATION_TITLES[row], f'`{name}`',
                         *(words.get((k, v), 'yes' if v is True else 'no') for k, v in switches.items()),
                         _fmt(params / 1e6, 2, 'M'), _fmt(macs / 1e9, 2, 'G')])
    return table(ABLATION_HEADERS, rows, 'lllllllrr')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', action='append', metavar='NAME',
                        help='measure this model only (repeatable): convmlp_s/m/l or any timm model name')
    parser.add_argument('--img-size', type=parse_size, default=(224, 224), metavar='N|HxW',
                        help='input size for --model (default 224)')
    parser.add_argument('--num-classes', type=int, default=None, metavar='N',
                        help='classifier classes for --model (default: the model\'s own, 1000)')
    parser.add_argument('--skip-dense', action='store_true',
                        help='leave out the detection / segmentation models (no mmdet / mmseg needed)')
    parser.add_argument('--ablation', action='store_true',
                        help='params and MACs at 224 of every row of the ablation, S/M/L, in one table')
    args = parser.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 0:
        fail(f'--num-classes must be >= 0, got {args.num_classes}')
    try:
        if args.ablation:
            print(ablation_table())
        elif args.model:
            print(table(HEADERS, [model_row(m, args.img_size, args.num_classes) for m in args.model], ALIGN))
        else:
            print(paper_table(args.skip_dense))
    except ValueError as e:  # the model refuses the input (e.g. ConvMLP below 32x32)
        fail(f'{e}')
    return 0


if __name__ == '__main__':
    exit_process(main())
