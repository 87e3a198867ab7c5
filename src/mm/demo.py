"""Command line of ``detection/demo.py`` and ``segmentation/demo.py``: pictures of a model's predictions
(:mod:`src.mm.inference`). Bad input (missing or unreadable image, missing or wrong config, a checkpoint that
does not fit) is one ``<command>: error: ...`` line and exit code 2."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..utils.errors import UsageError, report
from ..utils.images import read_images, save_png
from . import require_openmmlab
from .inference import dense_inferencer, draw_predictions

__all__ = ['main']


def main(task: str, argv=None) -> int:
    what = 'boxes, masks and class names' if task == 'detection' else 'the class map'
    p = argparse.ArgumentParser(
        prog=f'{task}/demo.py',
        description=f'Draw a {task} model\'s predictions ({what}, in the class colours) on images; one PNG '
                    f'per image, of its size, in --out.')
    p.add_argument('config', help=f'config file under configs/{task}/')
    p.add_argument('checkpoint', help='checkpoint: a training run\'s .pth (or a release file, converted on load)')
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    p.add_argument('--out', default=f'outputs/{task}_demo', help='folder for the PNGs (default %(default)s)')
    if task == 'detection':
        p.add_argument('--score-thr', type=float, default=0.3, help='draw boxes scoring at least this (default 0.3)')
    else:
        p.add_argument('--opacity', type=float, default=0.6, help='opacity of the class colours (default 0.6)')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda' (default cpu)")
    args = p.parse_args(argv)
    prog = f'{task}/demo.py'
    try:
        require_openmmlab()
        read_images(args.images)
        inferencer = dense_inferencer(task, args.config, args.checkpoint, args.device)
        pictures = draw_predictions(inferencer, task, args.images, **(
            dict(score_thr=args.score_thr) if task == 'detection' else dict(opacity=args.opacity)))
    except UsageError as e:
        return report(e, prog)
    out = Path(args.out)
    for path, (picture, pred) in zip(args.images, pictures):
        dst = save_png(picture, out / (Path(path).stem + '.png'))
        if task == 'detection':
            inst = pred.pred_instances
            kept = int((inst.scores >= args.score_thr).sum())
            print(f'{path}: {kept} objects scoring >= {args.score_thr} -> {dst}')
        else:
            classes = inferencer.model.dataset_meta.get('classes') or ()
            found = sorted(set(pred.ravel().tolist()))
            names = [classes[i] if i < len(classes) else str(i) for i in found]
            print(f'{path}: classes {", ".join(names)} -> {dst}')
    print(f'done: {len(pictures)} picture(s) in {os.path.abspath(out)}')
    return 0
