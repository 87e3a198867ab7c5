"""The paper's feature-map figure: channel activations of ConvMLP after the tokenizer, the conv stage and
each ConvMLP stage, for one image, optionally beside a timm model. Writes one PNG and prints its path.

    python tools/visualize.py                                   # ConvMLP-S, released weights, a cat photo
    python tools/visualize.py --model convmlp_m --compare resnet50 --out figs/m_vs_r50.png
    python tools/visualize.py --image my.jpg --checkpoint runs/convmlp_s/model_best.pth
    python tools/visualize.py --random --compare resnet50       # random weights, no download

The default image is scikit-image's ``chelsea`` (``--image skimage:astronaut`` picks another of its
samples). Released weights are used when reachable (else random weights, with a note); ``--random``
gives random weights to both models. Offline, the Hugging Face hub retries for about a minute before a
``--compare`` model falls back to random weights: pass ``--random`` or set ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src import zoo  # noqa: E402
from src.atomic import atomic_write  # noqa: E402
from src.cli import add_model_args, build_model, fail, parse_size  # noqa: E402
from src.feature_maps import DPI, convmlp_stage_maps, feature_grid, timm_stage_maps  # noqa: E402

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


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float, ImageNet-normalised."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255)
    return ((x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None])[None]


def build_timm(name: str, random: bool):
    """timm ``features_only`` model ``name`` with pretrained weights when reachable; (model, weights note)."""
    import timm
    if not timm.is_model(name):
        import difflib
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        fail(f'unknown timm model {name!r}' + (f"; did you mean '{close[0]}'?" if close else ''))
    if not random:
        try:
            return timm.create_model(name, pretrained=True, features_only=True), 'pretrained'
        except Exception as e:  # offline hub, no pretrained tag...: any failure means no pretrained weights
            print(f'note: pretrained {name} not reachable ({type(e).__name__}); using random weights',
                  file=sys.stderr)
    return timm.create_model(name, pretrained=False, features_only=True), 'random init'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument('--image', default='skimage:chelsea', help='image file, or skimage:NAME (default chelsea)')
    parser.add_argument('--img-size', type=parse_size, default=(224, 224), metavar='N|HxW',
                        help='the image is resized to this (default 224)')
    parser.add_argument('--channels', type=int, default=6, metavar='K', help='channels shown per stage (default 6)')
    parser.add_argument('--compare', metavar='TIMM_MODEL', help='a timm model drawn beside, e.g. resnet50')
    parser.add_argument('--out', type=Path, help='PNG to write (default feature_maps_<model>[_vs_<other>].png)')
    args = parser.parse_args(argv)
    if args.channels < 1:
        fail(f'--channels must be >= 1, got {args.channels}')
    if min(args.img_size) < 32:
        fail(f'--img-size {args.img_size[0]}x{args.img_size[1]} is too small: ConvMLP needs at least 32x32')
    out = args.out or Path(f'feature_maps_{args.model}' + (f'_vs_{args.compare}' if args.compare else '') + '.png')
    if out.suffix.lower() != '.png':
        fail(f'--out {out} must end in .png')

    image = load_image(args.image, args.img_size)
    x = to_tensor(image)
    model, weights = build_model(args, fallback_to_random=True)
    stages = convmlp_stage_maps(model, x)
    compare = compare_title = None
    if args.compare:
        other, other_weights = build_timm(args.compare, args.random)
        compare, compare_title = timm_stage_maps(other, x), f'{args.compare} ({other_weights})'
    fig = feature_grid(image, stages, k=args.channels, title=f'{zoo.NAMES[args.model]} ({weights})',
                       compare=compare, compare_title=compare_title)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=DPI)
    with atomic_write(out) as f:
        f.write(buf.getvalue())
    print(out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
