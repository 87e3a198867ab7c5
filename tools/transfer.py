"""Transfer in miniature, one command (`make transfer`): generate the shapes data, pretrain ConvMLP-S on
the cropped objects (classification.py), train RetinaNet-S, Mask R-CNN-S and Semantic FPN-S with that
backbone (init_cfg) and from scratch, and write one table, the validation curves and prediction pictures.
Everything on CPU, nothing downloaded; see src/studies/transfer.py for the layout of --out.

    python tools/transfer.py                       # work_dirs/transfer, data in data/transfer
    python tools/transfer.py --docs docs --readme docs/transfer.md   # also refresh the docs' table and figures
    python tools/transfer.py --models fpn --smoke   # plumbing check: tiny data, 1-2 iterations per run

A finished step is reused when the command runs again (its transfer_result.json): --fresh starts over.
"""
import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.errors import fail  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402


def _pair(text: str):
    try:
        a, b = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected TRAIN,VAL like 256,64; got {text!r}') from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f'need at least 1 train and 1 held-out; got {text!r}')
    return a, b


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WIDTHxHEIGHT like 128x96; got {text!r}') from None
    return w, h


def main(argv=None) -> int:
    from src.studies import transfer as T
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', type=Path, default=Path('work_dirs/transfer'), help='runs, table, curves (default %(default)s)')
    p.add_argument('--data', type=Path, default=None, help='generated data (default data/transfer; '
                   'OUT/data with --smoke)')
    p.add_argument('--models', default=','.join(r.name for r in T.RUNS),
                   help='dense models to train, comma-separated (default %(default)s)')
    p.add_argument('--inits', default=','.join(T.INITS), help='backbone inits to compare (default %(default)s)')
    p.add_argument('--procs', type=int, default=2, help='processes per run (default 2)')
    d = T.Settings()
    p.add_argument('--scenes', type=_pair, default=d.scenes, metavar='TRAIN,VAL', help='dense-model scenes (default 256,64)')
    p.add_argument('--crops', type=_pair, default=d.crops, metavar='TRAIN,VAL',
                   help='scenes whose objects become the classification crops (default 1500,300)')
    p.add_argument('--size', type=_size, default=d.size, help='scene WIDTHxHEIGHT (default 128x96)')
    p.add_argument('--radius', type=float, nargs=2, default=d.radius, metavar=('MIN', 'MAX'),
                   help='shape circumradius as a fraction of the shorter side (default 0.16 0.30)')
    p.add_argument('--smoke', action='store_true', help='plumbing check: a few 64 px scenes, 1-2 iterations per '
                   'run (numbers meaningless)')
    p.add_argument('--fresh', action='store_true', help='delete OUT\'s earlier runs first (not the data)')
    p.add_argument('--docs', type=Path, default=None, help='copy the curves and pictures here (transfer_*.png)')
    p.add_argument('--readme', type=Path, default=None,
                   help='put the table between the transfer markers of this Markdown page (make transfer: docs/transfer.md)')
    p.add_argument('--quiet', action='store_true', help="only this tool's lines, not the runs' logs (in OUT/logs)")
    args = p.parse_args(argv)

    names = [n for n in args.models.split(',') if n]
    known = {r.name: r for r in T.RUNS}
    bad = [n for n in names if n not in known]
    if bad or not names:
        fail(f'unknown model {bad[0] if bad else "(none)"} in --models: choose from {", ".join(known)}')
    inits = [i for i in args.inits.split(',') if i]
    if not inits or any(i not in T.INITS for i in inits):
        fail(f'--inits takes {" and/or ".join(T.INITS)}, comma-separated; got {args.inits!r}')
    if args.procs < 1:
        fail(f'--procs must be at least 1; got {args.procs}')
    if args.readme is not None and not args.readme.is_file():
        fail(f'README to update not found: {args.readme}')
    settings = T.Settings(**{**vars(T.SMOKE), 'dense_options': dict(T.SMOKE.dense_options),
                             'cls_options': list(T.SMOKE.cls_options)}) if args.smoke else \
        T.Settings(scenes=args.scenes, crops=args.crops, size=args.size, radius=tuple(args.radius))
    settings.procs = args.procs
    data = args.data or (args.out / 'data' if args.smoke else Path('data/transfer'))
    if args.fresh and args.out.exists():
        for child in args.out.iterdir():
            if child.resolve() != data.resolve():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    try:
        T.run_all(args.out, data, settings, [known[n] for n in names], inits, args.docs, args.readme,
                  log=lambda m: print(f'transfer: {m}', flush=True), echo=not args.quiet)
    except T.TransferError as e:
        fail(str(e))
    except (ValueError, FileExistsError) as e:  # bad settings of the generated data
        fail(str(e))
    return 0


if __name__ == '__main__':
    exit_process(main())
