"""A small-scale rerun of the paper's ablation (issue 14, item 5): every row of :data:`src.convmlp.ABLATION`
and ConvMLP itself, at one size (S by default), trained from scratch with ``classification.py``'s library
(:func:`src.train.run.main`, in this process) on a small image folder (the demo's digits), several seeds
per row. Then one table (Markdown + CSV) of mean and spread over the seeds of the held-out top-1, with
parameters, MACs (fvcore's count, :mod:`src.perf.flops`) at the study's resolution and at 224, and wall time per
run, and a plot of the held-out top-1 curves (mean +- std per row).

It is a small-scale study, not the paper's ImageNet figures: 32 px digits, a few epochs, no pretraining.

Layout of ``out``: ``runs/<row>-seed<S>/`` (each run's classification.py folder: summary.csv, train.log,
checkpoints), ``runs.csv`` (one line per run), ``ablation_study.{md,csv,png}``.
"""
from __future__ import annotations

import csv
import io
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from ..utils.atomic import atomic_write
from ..convmlp import ABLATION, ABLATION_TITLES, ARCHS
from ..utils.markdown import table

__all__ = ['ROWS', 'Run', 'model_name', 'row_title', 'run_one', 'run_study', 'aggregate', 'markdown_report',
           'write_outputs', 'report', 'NOTE']

ROWS = [*ABLATION, 'convmlp']  # the paper's order: Pure-MLP baseline, + conv stage, + conv downsampling, ConvMLP
NOTE = ("Small-scale study on a CPU: models trained from scratch on the digits set at 32 px for a few epochs; "
        "not the paper's ImageNet figures.")


def model_name(arch: str, row: str) -> str:
    """timm / src.convmlp name of ablation ``row`` at the size of ``arch`` ('convmlp' is ``arch`` itself)."""
    return arch if row == 'convmlp' else f'{arch}_{row}'


def row_title(row: str) -> str:
    return ABLATION_TITLES['' if row == 'convmlp' else row]


@dataclass
class Run:
    row: str
    seed: int
    model: str
    run_dir: Path
    top1: List[float]  # held-out top-1 after each epoch
    wall_s: float
    load_avg: float  # 1-minute load average when the run ended


def _read_top1(summary: Path) -> List[float]:
    with open(summary, newline='') as f:
        return [float(r['top1']) for r in csv.DictReader(f)]


def run_one(row: str, seed: int, data: Path, out: Path, epochs: int, arch: str, config: Path,
            extra: Sequence[str] = ()) -> Run:
    """Train one (row, seed) with classification.py's ``main`` in this process; raises RuntimeError if
    the run fails (its own error line is already on stderr)."""
    from ..train.run import main
    name = model_name(arch, row)
    runs = out / 'runs'
    experiment = f'{row}-seed{seed}'
    argv = [str(data), '-c', str(config), '--model', name, '--seed', str(seed), '--epochs', str(epochs),
            '--output', str(runs), '--experiment', experiment, '--overwrite', *extra]
    start = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f'the run of {name} seed {seed} failed (exit {code}): see its error above and '
                           f'{runs / experiment / "train.log"}')
    return Run(row, seed, name, runs / experiment, _read_top1(runs / experiment / 'summary.csv'), wall,
               os.getloadavg()[0])


def run_study(data: Path, out: Path, rows: Sequence[str], seeds: Sequence[int], epochs: int,
              arch: str = 'convmlp_s', config: Optional[Path] = None, extra: Sequence[str] = (),
              log=print) -> List[Run]:
    """Every (row, seed), rows in the order given, seeds inner."""
    config = config or Path(__file__).resolve().parents[2] / 'configs' / 'classification' / 'demo_digits.yml'
    done = []
    for row in rows:
        for seed in seeds:
            log(f'ablation study: {row_title(row)} ({model_name(arch, row)}), seed {seed}, {epochs} epoch(s)')
            run = run_one(row, seed, data, out, epochs, arch, config, extra)
            log(f'ablation study: {run.model} seed {seed}: top-1 {run.top1[-1]:.2f} in {run.wall_s:.1f} s '
                f'(load average {run.load_avg:.1f})')
            done.append(run)
    return done


def _mean_std(values: Sequence[float]):
    """(mean, sample std over seeds or None with one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _complexity(name: str, num_classes: int, size: int) -> Dict[str, int]:
    import torch
    from .. import convmlp
    from ..perf.flops import count_macs, count_params
    model = getattr(convmlp, name)(num_classes=num_classes)
    return dict(params=count_params(model), macs=count_macs(model, torch.zeros(1, 3, size, size)).total,
                macs_224=count_macs(model, torch.zeros(1, 3, 224, 224)).total)


def aggregate(runs: Sequence[Run], num_classes: int, img_size: int) -> List[Dict]:
    """One dict per row (in the order of ``runs``): final top-1 mean / std over seeds, per-seed values,
    mean curve, params, MACs, wall time."""
    by_row: Dict[str, List[Run]] = {}
    for r in runs:
        by_row.setdefault(r.row, []).append(r)
    result = []
    for row, rs in by_row.items():
        finals = [r.top1[-1] for r in rs]
        top1_mean, top1_std = _mean_std(finals)
        wall_mean, wall_std = _mean_std([r.wall_s for r in rs])
        n_epochs = min(len(r.top1) for r in rs)
        curves = [[r.top1[e] for r in rs] for e in range(n_epochs)]
        result.append(dict(
            row=row, title=row_title(row), model=rs[0].model, seeds=[r.seed for r in rs], epochs=n_epochs,
            top1_mean=top1_mean, top1_std=top1_std, top1_per_seed=finals,
            curve_mean=[statistics.fmean(c) for c in curves],
            curve_std=[statistics.stdev(c) if len(c) > 1 else 0. for c in curves],
            wall_s_mean=wall_mean, wall_s_std=wall_std, load_avg=[r.load_avg for r in rs],
            img_size=img_size, num_classes=num_classes,
            **_complexity(rs[0].model, num_classes, img_size)))
    return result


def _pm(mean: float, std: Optional[float], decimals: int) -> str:
    return f'{mean:.{decimals}f}' + (f' ± {std:.{decimals}f}' if std is not None else '')


def markdown_report(rows: Sequence[Dict], header: Sequence[str] = ()) -> str:
    """The study's table with a few lines of context (``header``) above it."""
    size = rows[0]['img_size']
    body = table(
        ['Row', 'Model', 'Top-1 (mean ± std)', 'Top-1 per seed', 'Params', f'MACs @{size}', 'MACs @224',
         'Wall time / run'],
        [[r['title'], f"`{r['model']}`", _pm(r['top1_mean'], r['top1_std'], 2),
          ' / '.join(f'{v:.2f}' for v in r['top1_per_seed']), f"{r['params'] / 1e6:.2f}M",
          f"{r['macs'] / 1e6:.1f}M", f"{r['macs_224'] / 1e9:.3f}G", _pm(r['wall_s_mean'], r['wall_s_std'], 1) + ' s']
         for r in rows], align='llrrrrrr')
    return '\n'.join([*header, '', body, ''])


CSV_FIELDS = ['row', 'title', 'model', 'seeds', 'epochs', 'top1_mean', 'top1_std', 'top1_per_seed', 'params',
              'img_size', 'macs', 'macs_224', 'wall_s_mean', 'wall_s_std']


def _csv(rows: Sequence[Dict], fields: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), extrasaction='ignore', lineterminator='\n')
    w.writeheader()
    for r in rows:
        w.writerow({k: (' '.join(f'{x:g}' for x in v) if isinstance(v, list) else ('' if v is None else
                    round(v, 4) if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


def plot_curves(rows: Sequence[Dict], path: Path, title: str) -> None:
    """Held-out top-1 against epoch: the mean over seeds per row, the band mean +- std."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    for r in rows:
        epochs = list(range(1, len(r['curve_mean']) + 1))
        line, = ax.plot(epochs, r['curve_mean'], 'o-', label=f"{r['title']} ({_pm(r['top1_mean'], r['top1_std'], 1)})")
        lo = [m - s for m, s in zip(r['curve_mean'], r['curve_std'])]
        hi = [m + s for m, s in zip(r['curve_mean'], r['curve_std'])]
        ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set(xlabel='epoch', ylabel='held-out top-1 (%)')
    ax.set_xticks(list(range(1, max(len(r['curve_mean']) for r in rows) + 1)))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='best')
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100)
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def write_outputs(runs: Sequence[Run], rows: Sequence[Dict], out: Path, header: Sequence[str],
                  title: str) -> Dict[str, Path]:
    """``runs.csv``, ``ablation_study.{md,csv,png}`` in ``out``; returns their paths by suffix."""
    paths = dict(md=out / 'ablation_study.md', csv=out / 'ablation_study.csv', png=out / 'ablation_study.png',
                 runs=out / 'runs.csv')
    per_run = [dict(row=r.row, model=r.model, seed=r.seed, top1=r.top1[-1], top1_per_epoch=r.top1,
                    wall_s=r.wall_s, load_avg=r.load_avg, run_dir=str(r.run_dir)) for r in runs]
    with atomic_write(paths['runs'], 'w') as f:
        f.write(_csv(per_run, list(per_run[0])))
    with atomic_write(paths['csv'], 'w') as f:
        f.write(_csv(rows, CSV_FIELDS))
    with atomic_write(paths['md'], 'w') as f:
        f.write(markdown_report(rows, header))
    plot_curves(rows, paths['png'], title)
    return paths


def read_run_args(run_dir: Path) -> dict:
    with open(run_dir / 'args.yaml') as f:
        return yaml.safe_load(f)


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob('*') if p.is_file())


def report(runs: Sequence[Run], data: Path, out: Path, arch: str, config: Path,
           load_start: float) -> Tuple[List[Dict], Dict[str, Path]]:
    """Aggregate ``runs`` and write the table, CSVs and curves with their context (data, recipe, CPU,
    threads, load average); returns the rows and the paths of :func:`write_outputs`."""
    import torch
    from ..utils.precision import cpu_isa
    run_args = read_run_args(runs[0].run_dir)
    classes = sum(1 for d in (data / 'train').iterdir() if d.is_dir())
    rows = aggregate(runs, classes, run_args['img_size'])
    seeds = sorted({r.seed for r in runs})
    loads = [load_start] + [r.load_avg for r in runs]
    header = [
        f'**Ablation, small-scale study** ({arch} size; {NOTE})',
        '',
        f'- data: `{data}` ({_count_files(data / "train")} train / {_count_files(data / "validation")} held-out '
        f'images, {classes} classes, {run_args["img_size"]} px); config `{config.name}` ({run_args["epochs"]} '
        f'epochs, batch {run_args["batch_size"]}, {run_args["opt"]} lr {run_args["lr"]}); '
        f'seeds {", ".join(map(str, seeds))}',
        '- top-1: held-out top-1 (%) after the last epoch, mean ± sample std over the seeds; params and MACs of '
        f'the trained models ({classes}-class head), MACs as fvcore counts them',
        f'- wall time: one run (training and evaluation), CPU {cpu_isa()}, {os.cpu_count()} cores, '
        f'{torch.get_num_threads()} torch thread(s); the machine may be shared: 1-minute load '
        f'average {min(loads):.1f}-{max(loads):.1f} during the study',
    ]
    title = (f'Ablation, small-scale study: {arch} size, digits {run_args["img_size"]} px, {len(seeds)} '
             f'seed(s), {run_args["epochs"]} epoch(s)\nnot the paper\'s ImageNet figures; band: ± std over seeds')
    return rows, write_outputs(runs, rows, out, header, title)


ARCH_CHOICES = list(ARCHS)
