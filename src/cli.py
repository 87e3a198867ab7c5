"""Command-line pieces shared by the tools: model and weight options, sizes, one-line errors.

Bad input ends a tool with ``<tool>: error: <what is wrong and how to fix it>`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import NoReturn, Tuple

from torch import nn

from .convmlp import ABLATION_MODELS, ARCHS
from .weights import CheckpointError, load_pretrained

__all__ = ['fail', 'parse_size', 'add_model_args', 'build_model']


def fail(message: str) -> NoReturn:
    """Print a one-line error naming the problem and the fix, then exit with code 2."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'convmlp'
    print(f'{prog}: error: {message}', file=sys.stderr)
    raise SystemExit(2)


def parse_size(text: str) -> Tuple[int, int]:
    """``'224'`` -> (224, 224); ``'192x256'`` -> (192, 256) as (height, width). For argparse ``type=``."""
    try:
        parts = [int(p) for p in text.lower().split('x')]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a size: give N or HxW, e.g. 224 or 192x256')
    return parts[0], parts[1]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model`` (a ConvMLP variant), and the weights: released ImageNet weights by default,
    ``--checkpoint`` (local path, URL or zoo name) or ``--random``."""
    parser.add_argument('--model', default='convmlp_s', choices=sorted([*ARCHS, *ABLATION_MODELS]),
                        help='ConvMLP variant, or an ablation row (no released weights: --checkpoint or --random)')
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--checkpoint', metavar='PATH',
                         help='weights: a local checkpoint, a URL or a zoo name (default: the released '
                              'ImageNet-1k weights of --model)')
    weights.add_argument('--random', action='store_true', help='random initial weights (no download)')


def build_model(args: argparse.Namespace, fallback_to_random: bool = False, need_head: bool = False,
                **kwargs) -> Tuple[nn.Module, str]:
    """The ConvMLP of ``args.model`` (``kwargs`` go to the constructor) with the weights the options ask
    for, in eval mode, and a short description of those weights.

    Unreachable release weights fall back to random ones (with a note on stderr) only if
    ``fallback_to_random``; any other problem with a checkpoint ends the tool with :func:`fail`, and so
    does a checkpoint head of another class count when ``need_head`` (it would be left random)."""
    from . import convmlp
    model = getattr(convmlp, args.model)(**kwargs)
    if args.random:
        return model.eval(), 'random init'
    if args.model in ABLATION_MODELS and args.checkpoint is None:
        if fallback_to_random:
            return model.eval(), 'random init (an ablation row has no released weights)'
        fail(f'{args.model} is an ablation row without released weights: pass --checkpoint PATH or --random')
    source = args.checkpoint or args.model
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            load_pretrained(model, source)
        for w in caught:
            if need_head and str(w.message).startswith('checkpoint head has'):
                fail(f'{w.message.args[0].split(":")[0]}: pass --num-classes to match the checkpoint')
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except (CheckpointError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        if args.checkpoint is None and fallback_to_random:
            print(f'note: released weights not reachable ({msg}); using random weights', file=sys.stderr)
            return model.eval(), 'random init (release weights not reachable)'
        fail(f'{msg} (or pass --random for random weights)')
    return model.eval(), 'ImageNet-1k release' if args.checkpoint is None else str(args.checkpoint)
