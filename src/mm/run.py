"""Train and test entry points on mmengine's Runner, shared by detection (mmdet 3.x) and segmentation
(mmseg 1.x): ``detection/{train,test}.py`` and ``segmentation/{train,test}.py`` only call :func:`main`.

The config comes from :mod:`src.mm.config` (data root, resume, AMP, CPU set-up), training runs on
:class:`src.mm.safe_runner.SafeRunner` (crash-safe checkpoints, exact resume), and ``test.py`` loads its
checkpoint through :mod:`src.mm.checkpoints` (``weights_only=True``, release files converted, every key
strictly). On CPU a torchrun launch joins a gloo group before mmengine would try (its ``init_dist`` calls
``torch.cuda.set_device``). Bad input is one ``<command>: error: ...`` line and exit code 2; a run stopped
by SIGTERM / SIGUSR1 with its checkpoint saved (:mod:`src.mm.preemption`) exits with code 75.
"""
import argparse
import copy
import os

import torch

from ..utils.distributed import env_rank, setup_process, teardown_process
from ..utils.errors import UsageError, report
from ..utils.preemption import EXIT_PREEMPTED, Preempted
from . import require_openmmlab
from .checkpoints import load_checkpoint_for_test, run_checkpoints_loadable
from .config import prepare_config

__all__ = ['main', 'parse_args']

METRIC_NAMES = {'detection': 'COCO bbox/segm AP', 'segmentation': 'mIoU'}


def _setup_process(launcher: str) -> None:
    """The CPU allocator, and the process group where mmengine would set it up wrongly: on CPU under torchrun
    (its ``init_dist`` calls ``torch.cuda.set_device``) and under Slurm (ranks and rendezvous from Slurm's
    variables, :func:`src.utils.distributed.slurm_environment`); on CUDA under torchrun mmengine sets up NCCL."""
    cuda = torch.cuda.is_available()
    if launcher == 'mpi' and not cuda:
        raise UsageError('--launcher mpi needs CUDA; on CPU use torchrun (--launcher pytorch) or srun '
                         '(--launcher slurm)')
    join = launcher == 'slurm' or (launcher == 'pytorch' and not cuda)
    setup_process('cuda' if cuda else 'cpu', join=join, launcher=launcher if launcher != 'mpi' else None)


def parse_args(task: str, mode: str, argv=None):
    from mmengine.config import DictAction
    what = METRIC_NAMES[task]
    p = argparse.ArgumentParser(
        prog=f'{task}/{mode}.py',
        description=(f'Train a ConvMLP {task} model from a config' if mode == 'train' else
                     f'Evaluate a {task} checkpoint and print {what}'))
    p.add_argument('config', help=f'config file under configs/{task}/')
    if mode == 'test':
        p.add_argument('checkpoint', help='checkpoint to evaluate (mmengine run file, or an mmdet 2.x / '
                                          'mmseg 0.x release file: converted on load)')
    p.add_argument('--work-dir', help='folder for logs and checkpoints (default work_dirs/CONFIG_NAME)')
    p.add_argument('--data-root', help='dataset folder for every dataloader and evaluator of the config')
    if mode == 'train':
        p.add_argument('--resume', nargs='?', const='auto',
                       help='resume from this checkpoint, or without a value from the newest in --work-dir '
                            'that loads (torn ones are named and skipped)')
        p.add_argument('--auto-scale-lr', action='store_true',
                       help="scale lr linearly from the config's base batch size to the actual one")
    p.add_argument('--amp', action='store_true', help='mixed precision: fp16 on CUDA; bf16 on a CPU that computes '
                   'it natively (AVX512-BF16, AMX), fp32 with a warning on others')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help='override config entries, key=value (e.g. train_dataloader.batch_size=4)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                   help='job launcher: pytorch = torchrun (dist_*.sh), slurm = one srun task per process (slurm_*.sh)')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _format_metrics(metrics: dict) -> str:
    return '\n'.join(f'{k}: {v:.4f}' if isinstance(v, float) else f'{k}: {v}' for k, v in metrics.items())


def main(task: str, mode: str, argv=None) -> int:
    """``{task}/{mode}.py`` (task 'detection'|'segmentation', mode 'train'|'test'); returns the exit code."""
    try:
        require_openmmlab()
        args = parse_args(task, mode, argv)
        cfg = prepare_config(args, task, mode)
        _setup_process(args.launcher)
        return _run(cfg, args, task, mode)
    except UsageError as e:  # a CheckpointError too
        return report(e, f'{task}/{mode}.py', show=env_rank() == 0)
    except Preempted:  # SIGTERM / SIGUSR1: checkpoint saved, every process done (src/mm/preemption.py)
        return EXIT_PREEMPTED
    finally:
        teardown_process(barrier=True)


def _forget_visualizer(visualizer) -> None:
    """mmdet's and mmseg's configs name their visualizer 'visualizer', and mmengine builds one visualizer of a
    name per process: a second run in this process would draw (and write its config) into the first run's
    folder. Forget this run's, so the next run builds its own."""
    from mmengine.visualization import Visualizer
    for manager in {type(visualizer), Visualizer}:
        if manager._instance_dict.get(visualizer.instance_name) is visualizer:
            del manager._instance_dict[visualizer.instance_name]


def _run(cfg, args, task: str, mode: str) -> int:
    from mmengine.model import is_model_wrapper
    from . import preemption  # noqa: F401  registers PreemptionHook
    from .safe_runner import SafeRunner  # also registers SafeCheckpointHook and ExactEpochBasedTrainLoop
    runner = SafeRunner.from_cfg(copy.deepcopy(cfg))
    try:
        with run_checkpoints_loadable():
            if mode == 'train':
                runner.train()
                runner.logger.info(f'done: outputs in {runner.work_dir}')  # checkpoints, logs, last_checkpoint
                return 0
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            dataset_meta = load_checkpoint_for_test(args.checkpoint, model, task)
            if dataset_meta:
                model.dataset_meta = dataset_meta
            runner.logger.info(f'loaded {args.checkpoint}')
            metrics = runner.test()
    finally:
        _forget_visualizer(runner.visualizer)
    if runner.rank == 0:
        print(f'{METRIC_NAMES[task]} of {args.checkpoint}:\n{_format_metrics(metrics)}', flush=True)
    return 0
