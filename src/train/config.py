"""Command line of ``classification.py`` (timm train.py conventions) and YAML config files.

``-c FILE.yml`` sets defaults: every key must be an option's name (``batch_size`` or ``batch-size``);
options given on the command line win, and every switch a config can turn on has its ``--no-...`` (``--aug``
for ``no_aug``) to turn it off again. ``_base_: other.yml`` (or a list) loads other files first, as in
OpenMMLab configs. Anything a user can get wrong is checked here or where it is
first known and raised as :class:`~src.utils.errors.UsageError`: the CLI prints its message and exits with code 2.
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

from ..utils.errors import UsageError

__all__ = ['did_you_mean', 'build_parser', 'parse_args', 'check_model_name']


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``''``."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ''


BOOL = argparse.BooleanOptionalAction  # every switch a config can turn on, --no-X turns off


class KeywordArgs(argparse.Action):
    """``KEY=VALUE ...`` into a dict (values parsed as YAML: ``False``, ``0.1``, ``patch``), merged over the
    default (a config's mapping), as timm train.py's ``--model-kwargs``."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = dict(getattr(namespace, self.dest) or {})
        for item in values:
            key, sep, value = item.partition('=')
            if not sep or not key:
                parser.error(f'{option_string} takes KEY=VALUE pairs, got {item!r}')
            kwargs[key.replace('-', '_')] = yaml.safe_load(value)
        setattr(namespace, self.dest, kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='classification.py', description='Train or evaluate an image classifier (ConvMLP or any timm model).')
    p.add_argument('-c', '--config', default='', metavar='FILE.yml', help='YAML file whose keys set the defaults')

    g = p.add_argument_group('data')
    g.add_argument('data_dir', nargs='?', default=None, help='dataset root (class folders under its split folders)')
    g.add_argument('--dataset', default='', help="'' or 'folder' for an image folder, a timm dataset name "
                   "(torch/cifar10...), or tv-NAME for any torchvision dataset (tv-CIFAR10, tv-Flowers102)")
    g.add_argument('--train-split', default='train', help='training split (sub-folder or dataset split)')
    g.add_argument('--val-split', default='validation', help="evaluation split ('' = the data dir itself)")
    g.add_argument('--download', action=BOOL, default=False, help='let torchvision / timm datasets download')
    g.add_argument('--strict-images', action=BOOL, default=False,
                   help='stop at the first unreadable image instead of skipping and counting it')
    g.add_argument('-j', '--workers', type=int, default=4, help='data loading processes per training process')

    g = p.add_argument_group('model')
    g.add_argument('--model', default='convmlp_s', help='any timm model name (convmlp_s/m/l included)')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=KeywordArgs, metavar='KEY=VALUE',
                   help='more arguments of the model, e.g. connect=False tokenizer=patch (values read as YAML; '
                        "a config's model_kwargs: {...} mapping, with these keys overriding it)")
    g.add_argument('--pretrained', action=BOOL, default=False, help='start from the pretrained weights (head dropped '
                   'when --num-classes differs)')
    g.add_argument('--initial-checkpoint', default='', help='start from these weights (path, URL or zoo name)')
    g.add_argument('--num-classes', type=int, default=None, help='classes (default: found in the dataset)')
    g.add_argument('--img-size', type=int, default=None, help='image size (default: the model\'s)')
    g.add_argument('--crop-pct', type=float, default=None, help='evaluation centre-crop fraction')
    g.add_argument('--mean', type=float, nargs=3, default=None, help='normalisation mean (RGB)')
    g.add_argument('--std', type=float, nargs=3, default=None, help='normalisation std (RGB)')
    g.add_argument('--interpolation', default='', help='evaluation resize interpolation')
    g.add_argument('--drop', type=float, default=0., help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, default=None, help='stochastic depth rate')

    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=300)
    g.add_argument('-b', '--batch-size', type=int, default=128, help='per process')
    g.add_argument('--validation-batch-size', type=int, default=None)
    g.add_argument('--opt', default='adamw', help='timm optimizer name')
    g.add_argument('--opt-eps', type=float, default=None)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=0.05)
    g.add_argument('--clip-grad', type=float, default=None)
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N',
                   help='optimizer update every N micro-batches of --batch-size (timm\'s name): global batch = '
                        'processes x batch x N, e.g. the paper\'s 1024 on 2 devices as 2 x 128 x 4')
    g.add_argument('--lr', type=float, default=5e-4)
    g.add_argument('--sched', default='cosine', help='timm scheduler name')
    g.add_argument('--min-lr', type=float, default=1e-5)
    g.add_argument('--warmup-lr', type=float, default=1e-6)
    g.add_argument('--warmup-epochs', type=int, default=5)
    g.add_argument('--cooldown-epochs', type=int, default=0)
    g.add_argument('--decay-epochs', type=float, default=90, help='step schedulers: epochs between decays')
    g.add_argument('--decay-rate', type=float, default=0.1)

    g = p.add_argument_group('augmentation and regularisation')
    g.add_argument('--no-aug', action='store_true', help='no augmentation: resize and centre crop only')
    g.add_argument('--aug', dest='no_aug', action='store_false', default=False,
                   help="augment (undoes a config's no_aug: true)")
    g.add_argument('--scale', type=float, nargs=2, default=(0.08, 1.0), help='random-resized-crop scale')
    g.add_argument('--ratio', type=float, nargs=2, default=(3. / 4., 4. / 3.))
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.)
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--aa', default=None, help="RandAugment / AutoAugment policy, e.g. 'rand-m9-mstd0.5-inc1'")
    g.add_argument('--reprob', type=float, default=0., help='random erasing probability')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--mixup', type=float, default=0.)
    g.add_argument('--cutmix', type=float, default=0.)
    g.add_argument('--cutmix-minmax', type=float, nargs=2, default=None)
    g.add_argument('--mixup-prob', type=float, default=1.)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch')
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--train-interpolation', default='random')
    g.add_argument('--model-ema', action=BOOL, default=False)
    g.add_argument('--model-ema-decay', type=float, default=0.9998)

    g = p.add_argument_group('run')
    g.add_argument('--amp', action=BOOL, default=False, help='mixed precision: fp16 autocast on CUDA; bf16 on a '
                   'CPU that computes it natively (AVX512-BF16, AMX), fp32 with a warning on others')
    g.add_argument('--amp-dtype', default=None, choices=('float16', 'bfloat16'))
    g.add_argument('--device', default=None, help="'cpu', 'cuda' (default: cuda if available)")
    g.add_argument('--launcher', default=None, choices=('none', 'pytorch', 'slurm'),
                   help="how the processes were started: 'pytorch' (torchrun, dist_classification.sh), 'slurm' "
                        "(one srun task per process, slurm_classification.sh) or 'none'; default: torchrun's "
                        "variables where set, else one process")
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--output', default='output/train', help='runs go to OUTPUT/EXPERIMENT')
    g.add_argument('--experiment', default='', help='run folder name (default: date-model-size)')
    g.add_argument('--resume', default='', help="continue a run: a checkpoint path, or 'auto' = the newest "
                   'checkpoint of OUTPUT/EXPERIMENT that loads (a fresh start if there is none)')
    g.add_argument('--overwrite', action=BOOL, default=False, help='start again in a run folder that has checkpoints')
    g.add_argument('--checkpoint-interval', type=int, default=0,
                   help='also save a recovery checkpoint every N steps inside an epoch (0: epoch ends only)')
    g.add_argument('--keep-checkpoints', type=int, default=2, help='epoch checkpoints kept besides best')
    g.add_argument('--log-interval', type=int, default=50, help='log every N steps')
    g.add_argument('--evaluate', action=BOOL, default=False, help='only evaluate the weights given by --resume, '
                   '--initial-checkpoint or --pretrained: top-1, top-5, loss')
    g.add_argument('--use-ema', action=BOOL, default=False, help='--evaluate: use the checkpoint\'s EMA weights')
    return p


_TUPLES = ('scale', 'ratio', 'mean', 'std', 'cutmix_minmax')


def _read_yaml(path: Path, chain: Tuple[Path, ...] = ()) -> dict:
    """A YAML mapping with its ``_base_`` files (paths relative to it) merged in underneath."""
    if not path.is_file():
        where = f' (the _base_ of {chain[-1]})' if chain else ''
        raise UsageError(f'config file not found: {path}{where}')
    if path.resolve() in chain:
        raise UsageError(f'config {path}: _base_ files include each other')
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f'config {path} is not valid YAML: {str(e).splitlines()[0]}') from None
    if not isinstance(cfg, dict):
        raise UsageError(f'config {path} must be a mapping of option: value, got a {type(cfg).__name__}')
    bases = cfg.pop('_base_', [])
    merged = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged.update(_read_yaml(path.parent / base, chain + (path.resolve(),)))
    merged.update({k: (path, v) for k, v in cfg.items()})
    return merged


def load_yaml_defaults(path: str, parser: argparse.ArgumentParser) -> dict:
    """Read a YAML config (and its ``_base_`` files) into ``{dest: value}``, refusing keys that are not
    options."""
    dests = {a.dest for a in parser._actions if a.dest not in ('help', 'config')}
    out = {}
    for key, (where, value) in _read_yaml(Path(path)).items():
        dest = str(key).replace('-', '_')
        if dest not in dests:
            raise UsageError(f"config {where}: unknown key '{key}'{did_you_mean(dest, sorted(dests))}")
        out[dest] = tuple(value) if dest in _TUPLES and isinstance(value, list) else value
    return out


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, dict]:
    """Parse ``argv`` with the YAML of ``-c`` as defaults. Returns (args, the YAML's values)."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    known, _ = pre.parse_known_args(argv)
    cfg = load_yaml_defaults(known.config, parser) if known.config else {}
    parser.set_defaults(**cfg)
    return parser.parse_args(argv), cfg


def check_model_name(name: str) -> None:
    """Raise :class:`UsageError` for a name timm does not know, suggesting the closest one."""
    import timm
    from .. import classification  # noqa: F401  registers convmlp_* in timm
    if not timm.is_model(name):
        raise UsageError(f"unknown model '{name}'{did_you_mean(name, timm.list_models())}; "
                         f"see timm.list_models() for the names")
