"""The paper's feature-map figure: channel activations of ConvMLP after the tokenizer, the conv stage and
each ConvMLP stage, for one image, optionally beside a timm model. Writes one PNG and prints its path.

    python tools/visualize.py                                   # ConvMLP-S, released weights, a cat photo
    python tools/visualize.py --model convmlp_m --compare resnet50 --out figs/m_vs_r50.png
    python tools/visualize.py --image my.jpg --checkpoint runs/convmlp_s/model_best.pth
    python tools/visualize.py --random --compare resnet50       # random weights, no download
    python tools/visualize.py --figure ablation                 # the release's figure (below)

``--figure ablation`` draws the release's figure: rows ResNet-50, MLP-Mixer-B/16, the Pure-MLP baseline
and ConvMLP-M (``--model`` picks another size; the baseline is its ``_pure_mlp`` ablation row), columns
the input and stages 1 to 4 (strides 4 to 32; for ConvMLP its conv stage and three ConvMLP stages, for the
baseline its patch tokenizer and three MLP stages), each panel the ``--channels`` (default 4) most active
channels. MLP-Mixer has no stages: its columns are four evenly spaced blocks (3, 6, 9, 12) with the tokens
reshaped to the patch grid (14x14 at 224). Weights: timm's pretrained ResNet-50 and MLP-Mixer when
reachable, the release's ConvMLP weights when reachable (``--checkpoint`` for others), the baseline's from
``--baseline-checkpoint``; every row without them has random weights and says so in its label
(``--random``: no download, all rows random except a ``--baseline-checkpoint`` given). The PNG is saved
with a 256-colour palette (about 140 KB at 224 px).

The default image is scikit-image's ``chelsea`` (``--image skimage:astronaut`` picks another of its
samples). Released weights are used when reachable (else random weights, with a note); ``--random``
gives random weights to both models. Offline, the Hugging Face hub retries for about a minute before a
``--compare`` model falls back to random weights: pass ``--random`` or set ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src import zoo  # noqa: E402
from src.utils.atomic import atomic_write  # noqa: E402
from src.model_options import add_model_args, build_model, parse_size  # noqa: E402
from src.utils.errors import fail  # noqa: E402
from src.convmlp import ABLATION_TITLES, ARCHS  # noqa: E402
from src.explain.feature_maps import (convmlp_stage_maps, feature_grid, png_bytes, stage_rows_figure,  # noqa: E402
                              timm_stage_maps, token_block_maps)
from src.utils.shutdown import exit_process  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(source: str, size) -> np.ndarray:
    """(H, W, 3) uint8 image resized to ``size`` = (H, W): a file, or ``skimage:NAME`` for a sample photo
    scikit-image ships (chelsea, astronaut, coffee, rocket...)."""
    from PIL import Image
    if source.startswith('skimage:'):
        import skimage.data
        name = source.split(':', 1)[1]
        if not callable(getattr(skimage.data, name, None)):
            fail(f'scikit-image has no sample image {name!r}: try skimage:chelsea or skimage:astronaut')
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
    else:
        try:
            image = Image.open(source)
            image.load()
        except (OSError, ValueError) as e:
            fail(f'cannot read image {source} ({e}): give an image file or skimage:chelsea')
    return np.asarray(image.convert('RGB').resize((size[1], size[0]), Image.BICUBIC))


def to_tensor(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float, normalised (default: ImageNet mean and std)."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])[None]


def timm_input(model, image: np.ndarray) -> torch.Tensor:
    """``image`` normalised with the mean and std of the timm model's pretrained config."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config(model=model)
    return to_tensor(image, cfg['mean'], cfg['std'])


def model_title(name: str) -> str:
    """'ConvMLP-M', or for an ablation row 'Pure-MLP baseline (ConvMLP-S size)'."""
    if name in zoo.NAMES:
        return zoo.NAMES[name]
    arch = next(a for a in ARCHS if name.startswith(a + '_'))
    return f'{ABLATION_TITLES[name[len(arch) + 1:]]} ({zoo.NAMES[arch]} size)'


def build_timm(name: str, random: bool, features_only: bool = True, **kwargs):
    """timm model ``name`` (``features_only`` by default; ``kwargs`` to timm) with pretrained weights when
    reachable; (model, weights note)."""
    import timm
    if not timm.is_model(name):
        import difflib
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        fail(f'unknown timm model {name!r}' + (f"; did you mean '{close[0]}'?" if close else ''))
    if not random:
        try:
            return timm.create_model(name, pretrained=True, features_only=features_only, **kwargs), 'pretrained'
        except Exception as e:  # offline hub, no pretrained tag...: any failure means no pretrained weights
            print(f'note: pretrained {name} not reachable ({type(e).__name__}); using random weights',
                  file=sys.stderr)
    return timm.create_model(name, pretrained=False, features_only=features_only, **kwargs), 'random init'


def _short(weights: str) -> str:
    """A weights note short enough for a row label: 'random init', 'ImageNet-1k release' or a file name."""
    if weights.startswith('random init'):
        return 'random init'
    name = weights if weights == 'ImageNet-1k release' else weights.rstrip('/').rsplit('/', 1)[-1]
    return name if len(name) <= 24 else name[:21] + '...'


def ablation_figure(args, image: np.ndarray):
    """The release's figure: ResNet-50, MLP-Mixer-B/16, the Pure-MLP baseline and ConvMLP, stages 1-4."""
    model = args.model or 'convmlp_m'
    if model not in ARCHS:
        fail(f'--figure ablation draws a ConvMLP size, not {model}: give --model {" or ".join(ARCHS)}')
    if args.compare:
        fail('--compare does not apply to --figure ablation (its rows are fixed): drop --compare')
    ours = []  # first: a bad checkpoint stops the tool before the big timm models are built
    x = to_tensor(image)
    for name, checkpoint in ((f'{model}_pure_mlp', args.baseline_checkpoint), (model, args.checkpoint)):
        convmlp, weights = build_model(  # --random: no download; a --baseline-checkpoint given is still read
            argparse.Namespace(model=name, checkpoint=checkpoint, random=args.random and not checkpoint),
            fallback_to_random=True)
        label = f'Pure-MLP baseline\n({zoo.NAMES[model]} size)' if name != model else zoo.NAMES[model]
        ours.append((f'{label}\n{_short(weights)}', convmlp_stage_maps(convmlp, x)[-4:]))
    resnet, weights = build_timm('resnet50', args.random)
    rows = [(f'ResNet-50\n{weights}', timm_stage_maps(resnet, timm_input(resnet, image))[-4:])]
    del resnet
    mixer_random = args.random or tuple(args.img_size) != (224, 224)
    if mixer_random and not args.random:
        print(f'note: MLP-Mixer-B/16\'s pretrained weights are for 224x224 images: random weights at '
              f'{args.img_size[0]}x{args.img_size[1]}', file=sys.stderr)
    mixer, weights = build_timm('mixer_b16_224', mixer_random, features_only=False, img_size=args.img_size)
    rows.append((f'MLP-Mixer-B/16\n{weights}\n(blocks as stages)', token_block_maps(mixer, timm_input(mixer, image))))
    rows += ours
    k = args.channels or 4
    title = (f'Feature maps by stage: top {k} channels by mean activation, each scaled to its range; ResNet and '
             f'ConvMLP at strides 4, 8, 16, 32,\nMLP-Mixer (no stages) at blocks 3, 6, 9, 12 of 12, tokens on the '
             f'16-px patch grid; "random init": untrained weights (--random, or none reachable)')
    return stage_rows_figure(image, rows, k=k, title=title)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.set_defaults(model=None)  # convmlp_s, or convmlp_m for --figure ablation
    parser.add_argument('--figure', choices=['ablation'],
                        help="'ablation': the release's figure, ResNet-50 / MLP-Mixer-B/16 / Pure-MLP baseline / "
                             "ConvMLP-M by stage (see above)")
    parser.add_argument('--baseline-checkpoint', metavar='PATH',
                        help='--figure ablation: weights of the Pure-MLP baseline (default: random)')
    parser.add_argument('--image', default='skimage:chelsea', help='image file, or skimage:NAME (default chelsea)')
    parser.add_argument('--img-size', type=parse_size, default=(224, 224), metavar='N|HxW',
                        help='the image is resized to this (default 224)')
    parser.add_argument('--channels', type=int, default=None, metavar='K',
                        help='channels shown per stage (default 6; 4 with --figure ablation)')
    parser.add_argument('--compare', metavar='TIMM_MODEL', help='a timm model drawn beside, e.g. resnet50')
    parser.add_argument('--out', type=Path, help='PNG to write (default feature_maps_<model>[_vs_<other>].png)')
    args = parser.parse_args(argv)
    if args.channels is not None and args.channels < 1:
        fail(f'--channels must be >= 1, got {args.channels}')
    if min(args.img_size) < 32:
        fail(f'--img-size {args.img_size[0]}x{args.img_size[1]} is too small: ConvMLP needs at least 32x32')
    if args.baseline_checkpoint and args.figure != 'ablation':
        fail('--baseline-checkpoint is for --figure ablation: add --figure ablation or drop it')
    if args.figure == 'ablation' and any(n % 16 for n in args.img_size):
        fail(f'--img-size {args.img_size[0]}x{args.img_size[1]} is not a multiple of 16 (MLP-Mixer\'s patch): '
             f'e.g. 224')
    if args.figure:
        name = f'feature_maps_{args.figure}_{args.model or "convmlp_m"}'
    else:
        args.model = args.model or 'convmlp_s'
        name = f'feature_maps_{args.model}' + (f'_vs_{args.compare}' if args.compare else '')
    out = args.out or Path(name + '.png')
    if out.suffix.lower() != '.png':
        fail(f'--out {out} must end in .png')

    image = load_image(args.image, args.img_size)
    if args.figure == 'ablation':
        fig = ablation_figure(args, image)
    else:
        x = to_tensor(image)
        model, weights = build_model(args, fallback_to_random=True)
        stages = convmlp_stage_maps(model, x)
        compare = compare_title = None
        if args.compare:
            other, other_weights = build_timm(args.compare, args.random)
            compare, compare_title = timm_stage_maps(other, x), f'{args.compare} ({other_weights})'
        fig = feature_grid(image, stages, k=args.channels or 6, title=f'{model_title(args.model)} ({weights})',
                           compare=compare, compare_title=compare_title)
    data = png_bytes(fig, palette=args.figure is not None)
    with atomic_write(out) as f:
        f.write(data)
    print(out)
    return 0


if __name__ == '__main__':
    exit_process(main())
