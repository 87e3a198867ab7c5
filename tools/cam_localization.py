"""Do ConvMLP's class activation maps fall on the object? The in-mask share of every method and layer on the
held-out shapes crops, against the mask's area share, a centred Gaussian and the same model with random
weights (src/studies/cam_localization.py); with --docs, the table and the picture of docs/cam.md.

    python tools/make_shapes.py data/cam --train 256 --val 64 --size 128x96 --radius 0.16-0.30 \\
        --crops 1500 300 --crop-size 64 --seed 0 --crop-masks        # the transfer workflow's crops, + masks
    python tools/cam_localization.py --checkpoint work_dirs/transfer/pretrain/best.pth.tar --data data/cam/cls
    python tools/cam_localization.py --checkpoint RUN/best.pth.tar --data data/cam/cls --docs docs
    python tools/cam_localization.py --checkpoint work_dirs/cam/fields/best.pth.tar --data data/cam_field/cls \
        --docs docs --tag cam_fields                 # fields (--crop-context 2) and their classifier: docs/cam.md

Bad input (no masks, a checkpoint whose input size is not the crops') is one line and exit code 2.
"""
import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from src.utils.errors import UsageError, fail  # noqa: E402
from src.utils.precision import cpu_name  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

LAYERS = 'tokenizer,conv_block,conv_stage,stage1,stage2,stage3,norm'
METHODS = 'gradcam,gradcam++,xgradcam,hirescam,layercam,eigencam'
# the picture's rows: model:method:layer; first the tool's default layer, then the best-scoring one at 64 px
FIGURE_ROWS = ('trained:gradcam:stage3,trained:gradcam:conv_block,trained:gradcam:conv_stage,trained:gradcam++:stage1,'
               'trained:layercam:conv_block,trained:eigencam:conv_block,random:gradcam:conv_block')
TAG = 'cam_localization'   # the docs' picture DOCS/TAG.png and block <!-- TAG:start --> ... <!-- TAG:end --> of cam.md


def _smoothing(result: dict) -> str:
    """The header's words for the run's smoothing (the library's eigen_smooth, aug_smooth), if any."""
    words = {'eigen': "eigen_smooth (the first principal component of each method's weighted activations)",
             'aug': 'aug_smooth (the mean over six test-time augmentations)'}
    smooth = [words[s] for s in result.get('smooth', [])]
    return ', smoothed by the library\'s ' + ' and '.join(smooth) if smooth else ''


def report(result: dict):
    """(header, table, footer) of the docs' block for the numbers of :func:`measure` (and the run's details)."""
    from src.studies.cam_localization import FOLD, markdown_table
    area, se = result['area'], [r['trained_se'] for r in result['rows']]
    what = result.get('what', 'crops')
    header = (f"{result['n']} held-out {what} ({result['split']}) at {result['size'][0]}x{result['size'][1]} px; "
              f"the classifier's top-1 on them "
              f"{result['top1']['trained']:.1f} (random weights {result['top1']['random']:.1f}); each map explains "
              f"the {result['explain']} class{_smoothing(result)}. Each cell: the mean share of the map's mass inside "
              f"the object's mask, as a multiple of the masks' mean area share {area:.3f} (what a uniform map gets), for the trained classifier "
              f"/ the same ConvMLP-S with random weights. A centred Gaussian (sigma a quarter of the side) gets "
              f"{result['centre']:.3f}, {result['centre'] / area:.2f}x. Bold: at least {FOLD:g}x and above random weights.")
    footer = (f"Standard errors of the trained model's mean shares: {min(se):.3f}-{max(se):.3f} "
              f"({min(se) / area:.2f}x-{max(se) / area:.2f}x). Measured by `{result['command']}` in "
              f"{result['wall_s'] / 60:.0f} min ({result['cpu_s'] / 60:.0f} min of CPU, {result['threads']} threads of an "
              f"{result['cpu']}; load average {result['load'][0]} at the start, {result['load'][1]} at the end: a shared "
              f"machine).")
    return header, markdown_table(result), footer


def main(argv=None) -> int:
    from src.model_options import add_model_args, build_model, load_classifier
    from src.studies import cam_localization as C
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument('--data', type=Path, required=True, help='the crops folder (cls/) with masks/')
    p.add_argument('--split', default='validation')
    p.add_argument('--limit', type=int, default=0, help='the first N crops only (default: all)')
    p.add_argument('--methods', default=METHODS, help=f'comma-separated (default {METHODS})')
    p.add_argument('--layers', default=LAYERS, help=f'comma-separated (default {LAYERS})')
    p.add_argument('--explain', choices=('predicted', 'true'), default='predicted',
                   help="the class each map explains: the model's prediction (default) or the crop's label")
    p.add_argument('--eigen-smooth', action='store_true', help="the library's eigen_smooth: each map the first "
                   "principal component of the method's weighted activations")
    p.add_argument('--aug-smooth', action='store_true', help="the library's aug_smooth: each map the mean over six "
                   'test-time augmentations (six times the passes)')
    p.add_argument('--seed', type=int, default=0, help='seed of the random-weight model (default 0)')
    p.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    p.add_argument('--json', type=Path, help='write every number here')
    p.add_argument('--reuse', type=Path, metavar='JSON', help="the numbers of an earlier run's --json instead of "
                   'measuring again (redraws the picture and the table)')
    p.add_argument('--docs', type=Path, help='write DOCS/TAG.png and the table into DOCS/cam.md')
    p.add_argument('--tag', default=TAG, help='with --docs: the picture DOCS/TAG.png and the block '
                   f'<!-- TAG:start --> of cam.md (default {TAG}; fields: cam_fields)')
    p.add_argument('--figure-rows', default=FIGURE_ROWS, help='MODEL:METHOD:LAYER,... of the picture')
    p.add_argument('--figure-crops', type=int, default=9, help='crops across the picture (default 9)')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    page = args.docs / 'cam.md' if args.docs else None
    if page and f'<!-- {args.tag}:start -->' not in (page.read_text() if page.is_file() else ''):
        fail(f'--docs {args.docs} has no cam.md with a <!-- {args.tag}:start --> ... <!-- {args.tag}:end --> block')
    try:
        crops = C.load_crops(args.data, args.split, args.limit)
    except UsageError as e:
        fail(e)
    clf = load_classifier(args)
    size = clf.data_cfg['input_size'][1:]
    if tuple(size) != crops.images.shape[1:3]:
        fail(f'{args.checkpoint or args.model} takes {size[0]}x{size[1]} inputs, the crops are '
             f'{crops.images.shape[1]}x{crops.images.shape[2]}: give the classifier trained on these crops')
    torch.manual_seed(args.seed)
    random_model, _ = build_model(argparse.Namespace(model=args.model, checkpoint=None, random=True),
                                  num_classes=len(clf.names))
    models = {'trained': clf.model, 'random': random_model}
    mean, std = clf.data_cfg['mean'], clf.data_cfg['std']
    methods, layers = args.methods.split(','), args.layers.split(',')
    from src.explain.cam import METHODS as KNOWN, resolve_layer, smoothing_names
    for m in methods:
        if m not in KNOWN:
            fail(f'unknown method {m!r} in --methods: choose from {", ".join(KNOWN)}')
    for layer in layers:
        try:
            resolve_layer(clf.model, layer)
        except ValueError as e:
            fail(f'--layers: {e}')

    if args.reuse:
        result = json.loads(args.reuse.read_text())
        asked = smoothing_names(args.eigen_smooth, args.aug_smooth)
        if asked and asked != result.get('smooth', []):
            fail(f'--reuse {args.reuse} was measured with smoothing {result.get("smooth", []) or "none"}, not '
                 f'{asked}: drop the smoothing flags (the file decides) or measure again')
        print(f'numbers from {args.reuse} ({result["command"]})')
    else:
        load_before, tic, cpu0 = os.getloadavg(), time.time(), time.process_time()
        result = C.measure(models, crops, mean, std, methods, layers, args.explain, eigen_smooth=args.eigen_smooth,
                           aug_smooth=args.aug_smooth)
        wall, cpu = time.time() - tic, time.process_time() - cpu0
        command = 'python tools/cam_localization.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        result.update(command=command, checkpoint=str(args.checkpoint or args.model), weights=clf.weights,
                      cpu=cpu_name(), threads=args.threads, wall_s=wall, cpu_s=cpu, data=str(args.data),
                      split=args.split, load=[round(load_before[0], 1), round(os.getloadavg()[0], 1)])
    header, table, footer = report(result)
    print(header, table, footer, sep='\n\n')
    if args.json:
        from src.utils.atomic import atomic_write
        with atomic_write(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    if args.docs:
        rows = [tuple(r.split(':')) for r in args.figure_rows.split(',')]
        picks = C.subset(crops, C.pick_crops(crops.labels, args.figure_crops))
        smooth = result.get('smooth', [])
        panels = C.figure_panels(models, picks, mean, std, rows, 'eigen' in smooth, 'aug' in smooth)
        title = (f"Held-out {crops.kind} (the first of each class in turn), their object outlined; below, maps of "
                 f"the predicted "
                 f"class: its name (red: wrong) and the map's in-mask share. Classifier top-1 {result['top1']['trained']:.1f}.")
        from src.explain.feature_maps import png_bytes
        from src.utils.atomic import atomic_write
        with atomic_write(args.docs / f'{args.tag}.png') as f:
            f.write(png_bytes(C.crop_grid(picks, panels, title), palette=True))
        from src.utils.markdown import replace_block
        replace_block(args.docs / 'cam.md', f'<!-- {args.tag}:start -->', f'<!-- {args.tag}:end -->',
                      f'{header}\n\n{table}\n\n{footer}')
        print(f'wrote {args.docs / (args.tag + ".png")} and the table of {args.docs / "cam.md"}')
    return 0


if __name__ == '__main__':
    exit_process(main())
