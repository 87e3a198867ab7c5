"""The paper's workflow in miniature (``make transfer``, ``tools/transfer.py``): pretrain ConvMLP-S on a
classification set, then train RetinaNet-S, Mask R-CNN-S and Semantic FPN-S with that backbone and,
for comparison, the same schedules from scratch; one table, one figure of the validation curves.

No download: the data are generated shapes (:mod:`src.studies.shapes`): scenes in COCO and ADE20K layout for the
dense models, and the objects of *other* scenes cropped into a classification ImageFolder (ImageNet's
stand-in). The classification run is ``classification.py`` (``dist_classification.sh``), the dense runs
``dist_detection.sh`` / ``dist_segmentation.sh`` with the configs ``configs/*/shapes/*_{scratch,
pretrained}.py``; the pretrained ones get the classification run's ``best.pth.tar`` the way a user points
them at an ImageNet file: ``--cfg-options model.backbone.init_cfg.checkpoint=PATH``.

Layout of ``OUT`` (default ``work_dirs/transfer``)::

    pretrain/                      the classification run (summary.csv, best.pth.tar, ...)
    RUN_{scratch,pretrained}/      the dense runs' work dirs (mmengine logs, vis_data/scalars.json, .pth)
    RUN_*/transfer_result.json     written when a run has finished: wall time, final metrics, curve
    logs/NAME.log                  each command's full output
    transfer.md, transfer.json     the table (Markdown) and everything behind it
    transfer_curves.png            validation curves, pretrained vs scratch
    predictions/                   detection and segmentation pictures of the pretrained models
"""
from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..utils.atomic import atomic_write
from ..utils.errors import UsageError

__all__ = ['Settings', 'SMOKE', 'RUNS', 'TransferError', 'prepare_data', 'pretrain', 'train_dense',
           'read_curve', 'table', 'plot_curves', 'update_readme', 'run_all']

ROOT = Path(__file__).resolve().parents[2]
CLS_CONFIG = 'configs/classification/shapes_convmlp_s.yml'
README_START, README_END = '<!-- transfer:start -->', '<!-- transfer:end -->'


class TransferError(UsageError):
    """Bad input or a failed step: one line, the CLI exits with code 2."""


@dataclass(frozen=True)
class Run:
    """A dense model of the comparison: its task, config stem, dataset layout and metrics."""
    name: str
    title: str
    task: str
    config: str          # with '{init}' for 'scratch' / 'pretrained'
    layout: str          # sub-folder of the data: coco / ade
    metrics: Tuple[str, ...]

    def config_for(self, init: str) -> str:
        return self.config.format(init=init)


RUNS = (
    Run('retinanet', 'RetinaNet-S', 'detection', 'configs/detection/shapes/retinanet_convmlp_s_fpn_shapes_{init}.py',
        'coco', ('bbox_AP', 'bbox_AP50')),
    Run('maskrcnn', 'Mask R-CNN-S', 'detection', 'configs/detection/shapes/maskrcnn_convmlp_s_fpn_shapes_{init}.py',
        'coco', ('bbox_AP', 'bbox_AP50', 'mask_AP')),
    Run('fpn', 'Semantic FPN-S', 'segmentation', 'configs/segmentation/shapes/fpn_convmlp_s_shapes_{init}.py',
        'ade', ('mIoU',)),
)
INITS = ('scratch', 'pretrained')
# mmengine's scalar names -> ours; detection APs are fractions there, percentages here
SCALARS = {'coco/bbox_mAP': 'bbox_AP', 'coco/bbox_mAP_50': 'bbox_AP50', 'coco/segm_mAP': 'mask_AP',
           'coco/segm_mAP_50': 'mask_AP50', 'mIoU': 'mIoU', 'aAcc': 'aAcc'}


@dataclass
class Settings:
    """The data and the schedules' knobs (the configs hold the rest)."""
    scenes: Tuple[int, int] = (256, 64)      # train / held-out scenes of the dense models
    crops: Tuple[int, int] = (1500, 300)     # train / held-out scenes whose objects become the crops
    size: Tuple[int, int] = (128, 96)        # scene width x height
    radius: Tuple[float, float] = (0.16, 0.30)   # shape circumradius / shorter side: 31-58 px wide shapes
    crop_size: int = 64
    seed: int = 0
    procs: int = 2
    cls_options: List[str] = field(default_factory=list)                  # extra classification.py options
    dense_options: Dict[str, List[str]] = field(default_factory=dict)    # extra --cfg-options per task or run

    def data_stamp(self) -> dict:
        return dict(scenes=list(self.scenes), crops=list(self.crops), size=list(self.size),
                    radius=list(self.radius), crop_size=self.crop_size, seed=self.seed)


# A plumbing check for the tests: a handful of 64 px scenes, one or two iterations per run.
SMOKE = Settings(scenes=(4, 2), crops=(6, 3), size=(64, 64), crop_size=32, cls_options=[
    '--epochs', '1', '-b', '4', '--validation-batch-size', '4', '--log-interval', '1'], dense_options={
    'detection': ['train_dataloader.batch_size=1', 'val_dataloader.batch_size=1', 'train_cfg.max_epochs=1',
                  'train_dataloader.dataset.pipeline.2.scale=(64,64)', 'val_dataloader.dataset.pipeline.1.scale=(64,64)',
                  'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=1'],
    'maskrcnn': ['model.test_cfg.rcnn.score_thr=0.0'],
    'retinanet': ['model.test_cfg.score_thr=0.0'],
    'segmentation': ['train_dataloader.batch_size=1', 'train_cfg.max_iters=2', 'train_cfg.val_interval=1',
                     'param_scheduler.0.end=2', 'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1']})


# ---- steps ---------------------------------------------------------------------------------------
def prepare_data(data: Path, settings: Settings, log: Callable[[str], None]) -> Path:
    """Generate the scenes and crops into ``data`` unless it already holds them with these settings
    (``data/transfer_data.json``); a folder holding something else is an error, never deleted."""
    from .shapes import make_shapes
    stamp_file = data / 'transfer_data.json'
    stamp = settings.data_stamp()
    if stamp_file.is_file():
        if json.loads(stamp_file.read_text()) == stamp:
            log(f'data: reusing {data} ({_describe(stamp)})')
            return data
        raise TransferError(f'{data} holds shapes data of other settings ({stamp_file}): remove the folder or '
                            f'pass another --data')
    if data.exists() and any(data.iterdir()):
        raise TransferError(f'{data} exists and is not a transfer data folder: remove it or pass another --data')
    log(f'data: generating {_describe(stamp)} into {data}')
    make_shapes(data, settings.scenes[0], settings.scenes[1], settings.size, settings.seed,
                radius=settings.radius, crops=settings.crops, crop_size=settings.crop_size)
    with atomic_write(stamp_file, 'w') as f:
        json.dump(stamp, f)
    return data


def _describe(stamp: dict) -> str:
    return (f'{stamp["scenes"][0]} + {stamp["scenes"][1]} scenes of {stamp["size"][0]}x{stamp["size"][1]} '
            f'(shape radius {stamp["radius"][0]}-{stamp["radius"][1]} of the shorter side), crops of {stamp["crops"][0]} + {stamp["crops"][1]} other scenes at {stamp["crop_size"]} px')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run_command(cmd: List[str], log_file: Path, echo: bool) -> Tuple[int, float, str]:
    """Run ``cmd`` from the repository root on CPU, its output to ``log_file`` (and the console if
    ``echo``); returns (exit code, wall seconds, the output's last 40 lines)."""
    env = dict(os.environ, MASTER_PORT=str(_free_port()), PYTHON=sys.executable)
    env.setdefault('CUDA_VISIBLE_DEVICES', '')
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tail: List[str] = []
    tic = time.time()
    with open(log_file, 'w') as f:
        f.write('$ ' + ' '.join(shlex.quote(c) for c in cmd) + '\n')
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        try:
            for line in proc.stdout:
                f.write(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                tail = (tail + [line.rstrip()])[-40:]
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    return code, time.time() - tic, '\n'.join(tail)


def _fail_step(what: str, code: int, tail: str, log_file: Path) -> TransferError:
    lines = [ln for ln in tail.splitlines() if ln.strip() and not ln.lstrip().startswith(('File "', '^'))]
    last = next((ln for ln in reversed(lines) if 'error' in ln.lower()), lines[-1] if lines else '')
    return TransferError(f'{what} failed (exit {code}): {last.strip()[:300]} (full output: {log_file})')


def pretrain(out: Path, data: Path, settings: Settings, log, echo: bool = True) -> dict:
    """``dist_classification.sh`` on ``data/cls``; returns {checkpoint, top1, epochs, wall_s, curve}."""
    run_dir = out / 'pretrain'
    result_file = run_dir / 'transfer_result.json'
    if result_file.is_file():
        log(f'pretrain: reusing the finished run in {run_dir}')
        return json.loads(result_file.read_text())
    cmd = ['bash', str(ROOT / 'dist_classification.sh'), str(settings.procs), str(data / 'cls'), '-c', CLS_CONFIG,
           '--output', str(out), '--experiment', 'pretrain', '--overwrite', *settings.cls_options]
    log(f'pretrain: ConvMLP-S on the crops ({CLS_CONFIG}), {settings.procs} process(es)')
    code, wall, tail = _run_command(cmd, out / 'logs' / 'pretrain.log', echo)
    if code != 0:
        raise _fail_step('pretraining', code, tail, out / 'logs' / 'pretrain.log')
    import csv
    with open(run_dir / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    best = max(rows, key=lambda r: float(r['top1']))
    result = dict(checkpoint=str(run_dir / 'best.pth.tar'), top1=float(best['top1']), best_epoch=int(best['epoch']),
                  epochs=len(rows), wall_s=wall, curve=[(int(r['epoch']), float(r['top1'])) for r in rows],
                  command=cmd)
    with atomic_write(result_file, 'w') as f:
        json.dump(result, f, indent=1)
    log(f'pretrain: top-1 {result["top1"]:.1f} on the held-out crops (best of {len(rows)} epochs) in '
        f'{_minutes(wall)}; checkpoint {result["checkpoint"]}')
    return result


def read_curve(work_dir: Path) -> List[dict]:
    """The validation rows mmengine's LocalVisBackend wrote (``*/vis_data/scalars.json`` of the newest
    run in ``work_dir``): [{'step': epoch or iteration, metric: value (%)}, ...]."""
    files = sorted(glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json')))
    if not files:
        raise TransferError(f'no vis_data/scalars.json under {work_dir}: did the run validate?')
    rows = []
    for line in Path(files[-1]).read_text().splitlines():
        entry = json.loads(line)
        found = {ours: float(entry[theirs]) for theirs, ours in SCALARS.items() if theirs in entry}
        if found:
            scale = 100. if 'mIoU' not in found else 1.  # mmdet: fractions; mmseg: percentages
            rows.append(dict(step=int(entry['step']), **{k: v * scale for k, v in found.items()}))
    if not rows:
        raise TransferError(f'{files[-1]} has no validation metrics')
    return rows


def train_dense(run: Run, init: str, out: Path, data: Path, settings: Settings, checkpoint: Optional[str],
                log, echo: bool = True) -> dict:
    """One dense run through its launcher; returns {run, init, wall_s, final metrics, curve, ...}."""
    work = out / f'{run.name}_{init}'
    result_file = work / 'transfer_result.json'
    if result_file.is_file():
        log(f'{run.name} {init}: reusing the finished run in {work}')
        return json.loads(result_file.read_text())
    if work.exists():
        shutil.rmtree(work)  # an unfinished run of ours: start it again
    options = [*settings.dense_options.get(run.task, []), *settings.dense_options.get(run.name, [])]
    if init == 'pretrained':
        options.append(f'model.backbone.init_cfg.checkpoint={checkpoint}')
    config = run.config_for(init)
    cmd = ['bash', str(ROOT / f'dist_{run.task}.sh'), config, str(settings.procs), str(data / run.layout),
           '--work-dir', str(work)] + (['--cfg-options', *options] if options else [])
    log(f'{run.name} {init}: {config}, {settings.procs} process(es)')
    log_file = out / 'logs' / f'{run.name}_{init}.log'
    code, wall, tail = _run_command(cmd, log_file, echo)
    if code != 0:
        raise _fail_step(f'{run.title} ({init})', code, tail, log_file)
    curve = read_curve(work)
    loaded = None
    if init == 'pretrained':
        text = log_file.read_text()
        marker = 'backbone tensors from '
        line = next((ln for ln in text.splitlines() if marker in ln), None)
        if line is None:
            raise TransferError(f'{run.title} (pretrained): no "loaded all ... backbone tensors" line in {log_file}: '
                                f'the backbone was not initialised from {checkpoint}')
        loaded = line[line.index('loaded all'):].strip()
    result = dict(run=run.name, init=init, config=config, wall_s=wall, final=curve[-1], curve=curve,
                  backbone=loaded, command=cmd)
    with atomic_write(result_file, 'w') as f:
        json.dump(result, f, indent=1)
    shown = ', '.join(f'{k} {curve[-1][k]:.1f}' for k in run.metrics if k in curve[-1])
    log(f'{run.name} {init}: {shown} on the held-out scenes in {_minutes(wall)}; outputs in {work}')
    return result


# ---- report --------------------------------------------------------------------------------------
def _minutes(seconds: float) -> str:
    return f'{int(seconds // 60)} min {int(round(seconds % 60)):02d} s'


def table(results: Dict[Tuple[str, str], dict], pre: dict, runs: Sequence[Run] = RUNS) -> str:
    """One line on the pretraining, then the Markdown table: one row per (model, init) with the final
    held-out metrics (in bold where the pretrained backbone beats scratch) and the wall time."""
    from ..utils.markdown import table as md
    cols = ('bbox_AP', 'bbox_AP50', 'mask_AP', 'mIoU')
    rows = []
    for run in runs:
        for init in INITS:
            res = results.get((run.name, init))
            if res is None:
                continue
            final = res['final']
            cells = [f'{final[c]:.1f}' if c in final and c in run.metrics else '-' for c in cols]
            if init == 'pretrained' and (run.name, 'scratch') in results:
                base = results[(run.name, 'scratch')]['final']
                cells = [f'**{c}**' if c != '-' and float(c) > base[k] else c for c, k in zip(cells, cols)]
            rows.append([run.title, 'pretrained on the crops' if init == 'pretrained' else 'scratch', *cells,
                         _minutes(res['wall_s'])])
    head = (f'Pretraining: ConvMLP-S on the crops, held-out top-1 {pre["top1"]:.1f} (best of {pre["epochs"]} '
            f'epochs), {_minutes(pre["wall_s"])}.')
    return head + '\n\n' + md(['model', 'backbone', 'bbox AP', 'bbox AP50', 'mask AP', 'mIoU', 'wall time'],
                              rows, 'llrrrrr')


def plot_curves(results: Dict[Tuple[str, str], dict], pre: dict, path: Path, runs: Sequence[Run] = RUNS) -> Path:
    """Validation curves: one panel per dense model (pretrained solid, scratch dashed), and the
    pretraining's held-out top-1."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    present = [r for r in runs if any((r.name, i) in results for i in INITS)]
    fig, axes = plt.subplots(1, len(present) + 1, figsize=(3.6 * (len(present) + 1), 3.2))
    ax = axes[0]
    ax.plot([e for e, _ in pre['curve']], [t for _, t in pre['curve']], 'o-', color='k')
    ax.set(title='pretraining (crops)', xlabel='epoch', ylabel='held-out top-1 (%)', ylim=(0, 100))
    colours = {'bbox_AP': 'tab:blue', 'bbox_AP50': 'tab:orange', 'mask_AP': 'tab:green', 'mIoU': 'tab:purple'}
    for ax, run in zip(axes[1:], present):
        for init in INITS:
            res = results.get((run.name, init))
            if res is None:
                continue
            for metric in run.metrics:
                pts = [(r['step'], r[metric]) for r in res['curve'] if metric in r]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-' if init == 'pretrained' else 'o--',
                        color=colours[metric], alpha=1. if init == 'pretrained' else .55, markersize=3,
                        label=f'{metric} {init}')
        ax.set(title=run.title, xlabel='epoch' if run.task == 'detection' else 'iteration',
               ylabel='held-out %', ylim=(0, 100))
        ax.legend(fontsize=6, loc='upper left')
    for ax in axes:
        ax.grid(alpha=.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=80)
    plt.close(fig)
    return path


def update_readme(readme: Path, block: str) -> bool:
    """Replace the text between the transfer markers of ``readme`` with ``block``; False if it has none."""
    from ..utils.markdown import replace_block
    return replace_block(readme, README_START, README_END, block)


PICTURE_SCORE_THR = 0.5   # boxes drawn in the README's pictures (the demo scripts' default is 0.3)


def pictures(results: Dict[Tuple[str, str], dict], out: Path, data: Path, images: int = 2) -> List[Path]:
    """Pictures of the pretrained Mask R-CNN-S (else RetinaNet-S) and Semantic FPN-S on the first
    ``images`` held-out scenes, each beside its input (boxes scoring >= ``PICTURE_SCORE_THR``), one strip per task:
    ``out/predictions/{detection,segmentation}.png``."""
    import numpy as np
    from ..mm.inference import dense_inferencer, draw_predictions
    from ..utils.images import read_images, save_png
    made = []
    detector = 'maskrcnn' if ('maskrcnn', 'pretrained') in results else 'retinanet'
    for run_name, task, layout in ((detector, 'detection', 'coco/val2017'), ('fpn', 'segmentation', 'ade/images/validation')):
        res = results.get((run_name, 'pretrained'))
        if res is None:
            continue
        ckpts = sorted(glob.glob(str(out / f'{run_name}_pretrained' / '*.pth')), key=os.path.getmtime)
        if not ckpts:
            continue
        files = sorted(glob.glob(str(data / layout / '*.jpg')))[:images]
        inputs = read_images(files)
        inferencer = dense_inferencer(task, str(ROOT / res['config']), ckpts[-1])
        drawn = [p for p, _ in draw_predictions(inferencer, task, files, score_thr=PICTURE_SCORE_THR)]
        gap = np.full((inputs[0].shape[0], 4, 3), 255, np.uint8)
        rows = [np.concatenate([i, gap, d], axis=1) for i, d in zip(inputs, drawn)]
        strip = np.concatenate([np.concatenate([r, np.full((4, r.shape[1], 3), 255, np.uint8)]) for r in rows])[:-4]
        made.append(save_png(strip, out / 'predictions' / f'{task}.png'))
    return made


def run_all(out: Path, data: Path, settings: Settings, runs: Sequence[Run] = RUNS, inits: Sequence[str] = INITS,
            docs: Optional[Path] = None, readme: Optional[Path] = None, log=print, echo: bool = True) -> dict:
    """Every step; returns {'pretrain': ..., 'runs': {(name, init): result}, 'table': markdown}."""
    from ..utils.precision import cpu_isa
    tic = time.time()
    out.mkdir(parents=True, exist_ok=True)
    prepare_data(data, settings, log)
    pre = pretrain(out, data, settings, log, echo)
    results = {}
    for run in runs:
        for init in inits:
            results[(run.name, init)] = train_dense(run, init, out, data, settings, pre['checkpoint'], log, echo)
    md = table(results, pre, runs)
    isa = cpu_isa()
    note = (f'Final held-out metrics (%) on the {settings.scenes[1]} validation scenes. {settings.procs} CPU '
            f'process(es) on {os.cpu_count()} cores ({isa}), fp32; wall times include start-up and every '
            f'validation. Data: {_describe(settings.data_stamp())}.')
    with atomic_write(out / 'transfer.md', 'w') as f:
        f.write(md + '\n\n' + note + '\n')
    with atomic_write(out / 'transfer.json', 'w') as f:
        json.dump(dict(pretrain=pre, runs={f'{k[0]}_{k[1]}': v for k, v in results.items()}, cpu=isa,
                       settings=settings.data_stamp(), procs=settings.procs), f, indent=1)
    curves = plot_curves(results, pre, out / 'transfer_curves.png', runs)
    made = pictures(results, out, data)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(curves, docs / 'transfer_curves.png')
        for p in made:
            shutil.copyfile(p, docs / f'transfer_{p.name}')
    if readme is not None:
        if not update_readme(readme, md + '\n\n' + note):
            log(f'note: {readme} has no {README_START} ... {README_END} block: table not copied there')
    log(md)
    log(note)
    log(f'done in {_minutes(time.time() - tic)}: table {out / "transfer.md"}, curves {curves}'
        + (f', pictures in {out / "predictions"}' if made else '') + f'; runs in {out}')
    return dict(pretrain=pre, runs=results, table=md)
