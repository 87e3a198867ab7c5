"""The command-line options that choose a ConvMLP and its weights, shared by the tools, and the model they
build: :func:`build_model` for any variant, :func:`load_classifier` for a classifier with its class names
and its data config (``tools/predict.py`` and the tools that explain or deploy a trained classifier), and
:func:`eval_transform`, timm's evaluation transform of that data config, with :func:`preprocess`, the
images through it.

Weights come from the release (default), ``--checkpoint`` (a local file, a URL or a zoo name: a
``classification.py`` run's checkpoint, a release file, a ``.safetensors`` file) or ``--random``. Anything
wrong with them ends the tool with one ``<tool>: error: ...`` line and exit code 2 (:func:`src.utils.errors.fail`).
"""
import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .convmlp import ABLATION_MODELS, ARCHS
from .utils.errors import fail
from .weights import CheckpointError, load_checkpoint_file, load_pretrained, unwrap_state_dict

__all__ = ['parse_size', 'add_model_args', 'build_model', 'Classifier', 'load_classifier', 'checkpoint_state',
           'run_data_config', 'class_names', 'eval_transform', 'preprocess']


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
                use_ema: bool = False, **kwargs) -> Tuple[nn.Module, str]:
    """The ConvMLP of ``args.model`` (``kwargs`` go to the constructor) with the weights the options ask
    for (a run's EMA weights with ``use_ema``), in eval mode, and a short description of those weights.

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
            load_pretrained(model, source, use_ema=use_ema)
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
    what = 'ImageNet-1k release' if args.checkpoint is None else str(args.checkpoint)
    return model.eval(), what + (' (EMA)' if use_ema else '')


@dataclass
class Classifier:
    """A ConvMLP classifier as the tools use it: the model (eval mode), what its weights are, the names of
    its outputs and where they come from, and timm's data config of its input (size, crop, mean/std)."""
    model: nn.Module
    weights: str
    names: List[str]
    names_from: str
    data_cfg: dict


def checkpoint_state(source: Optional[str]) -> Optional[dict]:
    """The checkpoint dict of a local file (its run arguments and class names), or None for other sources
    (a URL, a zoo name, none); a file that cannot be read ends the tool with :func:`fail`."""
    if not source or not Path(source).is_file():
        return None
    try:
        return load_checkpoint_file(source)
    except CheckpointError as e:
        fail(str(e))


def load_classifier(args: argparse.Namespace, use_ema: bool = False) -> Classifier:
    """The classifier the options of :func:`add_model_args` name (``args.model`` None: the architecture of
    the run the checkpoint comes from, else ConvMLP-S). The class count comes from the checkpoint's head;
    the names from :func:`class_names`; the data config is timm's for the model, with the run's
    ``--img-size``, ``--crop-pct``, ``--mean``/``--std`` and ``--interpolation`` where it set them."""
    state = checkpoint_state(args.checkpoint)
    run_args = state.get('args') if isinstance(state, dict) and isinstance(state.get('args'), dict) else {}
    num_classes = 1000
    if state is not None:
        try:
            sd = unwrap_state_dict(state, use_ema=use_ema)
        except CheckpointError as e:
            fail(f'{args.checkpoint}: {e}')
        if use_ema and state.get('state_dict_ema') is None:
            fail(f'{args.checkpoint} holds no EMA weights: drop --use-ema')
        if 'head.weight' not in sd:
            fail(f'{args.checkpoint} has no classifier head (a backbone or detector file?): give a '
                 f'classification checkpoint')
        num_classes = sd['head.weight'].shape[0]
    args.model = args.model or run_args.get('model') or 'convmlp_s'
    if args.model not in {*ARCHS, *ABLATION_MODELS}:
        fail(f'{args.checkpoint} is a run of {args.model}, not a ConvMLP: pass --model convmlp_s/m/l if it is one')
    model, weights = build_model(args, num_classes=num_classes, need_head=True, use_ema=use_ema)
    names, names_from = class_names(state, num_classes, args.checkpoint or args.model)
    return Classifier(model, weights, names, names_from, run_data_config(model, state))


def run_data_config(model: nn.Module, state: Optional[dict] = None) -> dict:
    """timm's data config of ``model`` (input size, interpolation, crop_pct, mean, std), with the
    ``--img-size``, ``--crop-pct``, ``--mean``/``--std`` and ``--interpolation`` of the run the checkpoint
    comes from (``state``: :func:`checkpoint_state`) where it set them."""
    from timm.data import resolve_data_config
    state = state if isinstance(state, dict) else {}
    run_args = state.get('args') if isinstance(state.get('args'), dict) else {}
    overrides = {k: run_args[k] for k in ('img_size', 'crop_pct', 'mean', 'std', 'interpolation')
                 if run_args.get(k) not in (None, '')}
    if 'img_size' in overrides:
        overrides['input_size'] = (3, overrides.pop('img_size'), run_args['img_size'])
    return resolve_data_config(overrides, model=model)


def class_names(checkpoint_state: Optional[dict], num_classes: int, source: str) -> Tuple[List[str], str]:
    """Names of the ``num_classes`` outputs and where they come from.

    A run of ``classification.py``: its checkpoint's ``classes``, else the class folders of the training
    split its ``args`` name (sorted, as the run indexed them). 1000 outputs otherwise: ImageNet-1k's names
    from timm (``timm.data.ImageNetInfo``). Otherwise ``class 0..N-1``."""
    state = checkpoint_state or {}
    if isinstance(state.get('classes'), (list, tuple)) and len(state['classes']) == num_classes:
        return [str(c) for c in state['classes']], f'the class folders of the run ({source})'
    args = state.get('args') if isinstance(state.get('args'), dict) else None
    if args and args.get('dataset', '') in ('', 'folder', 'imagefolder') and args.get('data_dir'):
        from .train.data import split_folders
        for name in split_folders(args.get('train_split') or ''):
            folder = Path(args['data_dir']) / name
            if folder.is_dir():
                names = sorted(d.name for d in folder.iterdir() if d.is_dir())
                if len(names) == num_classes:
                    return names, f'the class folders of {folder}'
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)], 'ImageNet-1k (timm.data.ImageNetInfo)'
    return [f'class {i}' for i in range(num_classes)], 'no names known: indices'


def eval_transform(data_cfg: dict):
    """timm's evaluation transform of ``data_cfg`` (resize, centre crop by ``crop_pct``, interpolation,
    mean/std): a ``Compose`` from a PIL image to the model's normalised float32 tensor (3, height, width)."""
    from timm.data import create_transform
    return create_transform(**{k: data_cfg[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')})


def preprocess(images: Sequence[np.ndarray], data_cfg: dict) -> torch.Tensor:
    """RGB uint8 images (H, W, 3), any sizes, as the model's input (N, 3, height, width), float32:
    :func:`eval_transform` of ``data_cfg``."""
    from PIL import Image
    transform = eval_transform(data_cfg)
    return torch.stack([transform(Image.fromarray(image)) for image in images])
