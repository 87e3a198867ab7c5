"""The paper's ablation as a small study anyone can rerun on a CPU (``make ablation-study``): every row
(Pure-MLP baseline, + conv stage, + conv downsampling, ConvMLP) at the size of ConvMLP-S, trained from
scratch on the demo's digits (32 px) with configs/classification/demo_digits.yml, several seeds each; then
a table of held-out top-1 (mean ± std over seeds), params, MACs at 32 and 224 px and wall time per run,
and the top-1 curves. A small-scale study, not the paper's ImageNet figures. See src/studies/ablation.py.

    python tools/ablation_study.py                                  # 4 rows x 3 seeds x 3 epochs
    python tools/ablation_study.py --rows pure_mlp convmlp --seeds 1 --epochs 1 --out output/quick

Writes OUT/ablation_study.{md,csv,png}, OUT/runs.csv and every run's folder under OUT/runs/.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.studies.ablation import ARCH_CHOICES, ROWS, report, run_study  # noqa: E402
from src.utils.errors import UsageError, fail  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

DEFAULT_DATA = Path('data/digits')


def _check_data(data: Path) -> None:
    for split in ('train', 'validation'):
        folder = data / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            fail(f'{folder} is not a folder of class folders: give --data an ImageFolder with train/ and '
                 f'validation/, or omit --data to write the digits set to {DEFAULT_DATA}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rows', nargs='+', default=ROWS, metavar='ROW',
                   help=f'ablation rows to train, in this order (default all: {" ".join(ROWS)})')
    p.add_argument('--seeds', type=int, default=3, metavar='N', help='seeds 0..N-1 per row (default 3)')
    p.add_argument('--epochs', type=int, default=3, help='epochs per run (default 3, as the demo)')
    p.add_argument('--arch', default='convmlp_s', choices=ARCH_CHOICES, help='model size (default convmlp_s)')
    p.add_argument('--data', type=Path, default=None,
                   help=f'ImageFolder with train/ and validation/ (default: the digits, written to {DEFAULT_DATA})')
    p.add_argument('--config', type=Path, default=ROOT / 'configs' / 'classification' / 'demo_digits.yml',
                   help='classification.py config of every run (default the demo\'s)')
    p.add_argument('--out', type=Path, default=Path('output/ablation_study'), help='output folder')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads of every run (default 1: the same numbers on any machine, and on a shared '
                        'one many times faster than 2 threads fighting other jobs for the cores)')
    args = p.parse_args(argv)
    bad = [r for r in args.rows if r not in ROWS]
    if bad:
        close = difflib.get_close_matches(bad[0], ROWS, n=1)
        fail(f'unknown row {bad[0]!r}' + (f" (did you mean '{close[0]}'?)" if close else '') +
             f': choose from {", ".join(ROWS)}')
    if len(set(args.rows)) != len(args.rows):
        fail(f'--rows lists a row twice ({" ".join(args.rows)}): give each once')
    if args.seeds < 1 or args.epochs < 1:
        fail(f'--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}')
    if args.threads < 1:
        fail(f'--threads must be >= 1, got {args.threads}')
    if not args.config.is_file():
        fail(f'--config {args.config} does not exist: give a classification.py YAML file')
    if args.data is None:
        from src.train.digits import write_digits_imagefolder
        try:
            args.data = write_digits_imagefolder(DEFAULT_DATA)
        except UsageError as e:
            fail(f'{e} (or pass --data)')
    _check_data(args.data)
    from src.utils.threads import torch_threads
    with torch_threads(args.threads):  # as it was after (main() may be called in-process)
        load_start = os.getloadavg()[0]
        try:
            runs = run_study(args.data, args.out, args.rows, list(range(args.seeds)), args.epochs, args.arch,
                             args.config)
        except RuntimeError as e:
            fail(str(e))
        rows, paths = report(runs, args.data, args.out, args.arch, args.config, load_start)
    for r in rows:
        print(f"{r['title']:28s} {r['model']:28s} top-1 {r['top1_mean']:6.2f}"
              + (f" ± {r['top1_std']:.2f}" if r['top1_std'] is not None else ''))
    print(f"table {paths['md']} and {paths['csv']}, curves {paths['png']}")
    return 0


if __name__ == '__main__':
    exit_process(main())
