"""Write the generated shapes (:mod:`src.studies.shapes`): scenes in COCO and ADE20K layout for the detection
and segmentation demos and tests, and with ``--crops`` their objects as a classification ImageFolder.

    python tools/make_shapes.py data/shapes --train 64 --val 16 --size 128x96
    python tools/make_shapes.py data/transfer --train 256 --val 64 --crops 1500 400 --crop-size 64
    python tools/make_shapes.py data/cam --train 256 --val 64 --crops 1500 300 --crop-masks   # + object masks
    python tools/make_shapes.py data/cam_field --crops 1 300 --crop-context 2 --crop-masks    # objects in wider fields

Bad input (a range that cannot work, an existing folder without --overwrite) is one line and exit code 2.
"""
import argparse
import sys
from pathlib import Path
from typing import Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.studies.shapes import OBJECTS, RADIUS, make_shapes  # noqa: E402
from src.utils.errors import report  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402


def _size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WIDTHxHEIGHT like 128x96; got {text!r}') from None
    return w, h


def _range(kind):
    def parse(text: str):
        try:
            low, high = (kind(v) for v in text.split('-'))
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected MIN-MAX like {"1-4" if kind is int else "0.1-0.3"}; '
                                             f'got {text!r}') from None
        return low, high
    return parse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('root', help='output folder (gets coco/ and ade/ subfolders)')
    p.add_argument('--train', type=int, default=64, help='number of training scenes')
    p.add_argument('--val', type=int, default=16, help='number of validation scenes')
    p.add_argument('--size', type=_size, default=(128, 96), help='image WIDTHxHEIGHT (default 128x96)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--objects', type=_range(int), default=OBJECTS, metavar='MIN-MAX',
                   help='objects tried per scene (default 1-4)')
    p.add_argument('--radius', type=_range(float), default=RADIUS, metavar='MIN-MAX',
                   help='shape circumradius as a fraction of the shorter side (default 0.08-0.22)')
    p.add_argument('--crops', type=int, nargs=2, default=(0, 0), metavar=('TRAIN', 'VAL'),
                   help='also write ROOT/cls: the objects of TRAIN (VAL) other scenes as a classification '
                        'ImageFolder (default: none)')
    p.add_argument('--crop-size', type=int, default=64, help='side of the classification crops in px (default 64)')
    p.add_argument('--crop-masks', action='store_true',
                   help="with --crops: each crop's object mask beside it, ROOT/cls/masks/SPLIT/CLASS/NNNNNN.png "
                        '(the crops are the same with or without)')
    p.add_argument('--crop-context', type=float, default=1.0, metavar='C',
                   help='with --crops: fields C times the side around each object at the same object scale, the '
                        'object anywhere in them, C x --crop-size px (default 1: crops centred on their objects)')
    p.add_argument('--overwrite', action='store_true', help='replace ROOT/coco, ROOT/ade (and ROOT/cls) if they exist')
    args = p.parse_args(argv)
    for flag, given in (('--crop-masks', args.crop_masks), ('--crop-context', args.crop_context != 1)):
        if given and not any(args.crops):
            return report(f'{flag} needs --crops TRAIN VAL (it changes the crops)')
    try:
        root = make_shapes(args.root, args.train, args.val, args.size, args.seed, args.overwrite, args.radius,
                           args.objects, tuple(args.crops), args.crop_size, args.crop_masks, args.crop_context)
    except FileExistsError as e:
        return report(f'{e.args[0]}: choose another folder, or pass --overwrite to delete it')
    except (ValueError, OSError) as e:
        return report(e)
    print(f'wrote {args.train} train + {args.val} val scenes: COCO layout in {root / "coco"}, '
          f'ADE20K layout in {root / "ade"}' + (f'; crops of {args.crops[0]} + {args.crops[1]} other scenes '
                                               f'in {root / "cls"}' + (' with their masks' if args.crop_masks else '')
                                               if any(args.crops) else ''))
    return 0


if __name__ == '__main__':
    exit_process(main())
