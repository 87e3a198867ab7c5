"""What a run leaves in OUTPUT/EXPERIMENT besides checkpoints: ``train.log``, ``args.yaml``,
``summary.csv`` (one row per epoch) and ``summary.png`` (loss and accuracy curves). All files but the log
are rewritten whole through :func:`src.utils.atomic.atomic_write`; the summary is rebuilt from the rows stored in
the checkpoint, so a resumed run never repeats or loses a row."""
from __future__ import annotations

import csv
import io
import logging
import sys
import time
from pathlib import Path
from typing import List

import yaml

from ..utils.atomic import atomic_write

__all__ = ['default_experiment', 'setup_logging', 'write_args', 'write_summary', 'plot_summary', 'SUMMARY_FIELDS']

SUMMARY_FIELDS = ['epoch', 'train_loss', 'eval_loss', 'top1', 'top5', 'lr']


def default_experiment(model: str, img_size: int) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{img_size}"


def setup_logging(log_file: Path = None, is_main: bool = True) -> logging.Logger:
    """Logger 'train': progress to stdout and ``log_file`` (main process only; others log warnings)."""
    log = logging.getLogger('train')
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter('%(asctime)s %(levelname)s %(message)s', '%H:%M:%S')
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    log.addHandler(console)
    if log_file is not None and is_main:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log


def write_args(args: dict, path: Path) -> None:
    with atomic_write(path, 'w') as f:
        yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}, f, sort_keys=False)


def write_summary(rows: List[dict], path: Path) -> None:
    fields = SUMMARY_FIELDS + [k for r in rows for k in r if k not in SUMMARY_FIELDS]
    fields = list(dict.fromkeys(fields))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    with atomic_write(path, 'w') as f:
        f.write(buf.getvalue())


def plot_summary(rows: List[dict], path: Path) -> None:
    """Two panels: train/eval loss and top-1/top-5 against epoch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    epochs = [r['epoch'] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r['train_loss'] for r in rows], 'o-', label='train')
    ax_loss.plot(epochs, [r['eval_loss'] for r in rows], 'o-', label='eval')
    ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
    ax_acc.plot(epochs, [r['top1'] for r in rows], 'o-', label='top-1')
    ax_acc.plot(epochs, [r['top5'] for r in rows], 'o-', label='top-5')
    ax_acc.set(xlabel='epoch', ylabel='accuracy (%)', title='evaluation accuracy')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=.3)
        ax.legend()
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=100)
    plt.close(fig)
