"""The mmengine config of a detection or segmentation run, prepared from the command line.

* ``--data-root DIR`` points every dataloader and evaluator of the config at one dataset folder, and the
  data paths are checked before anything is built (one clear error naming the missing path).
* ``--resume`` with no value takes the newest checkpoint of the work dir that loads, and its run's seed.
* ``--amp``: fp16 with loss scaling on CUDA; bf16 on a CPU that computes it natively
  (:mod:`src.utils.precision`, :mod:`src.mm.cpu_amp`), else fp32 with one warning.
* CPU: SyncBN becomes BN (SyncBN needs CUDA), the process group is gloo, and DDP gets ``device_ids=None``.
* Checkpoints are written by :class:`src.mm.safe_runner.SafeCheckpointHook` in place of mmengine's hook;
  epoch schedules train with :class:`src.mm.safe_runner.ExactEpochBasedTrainLoop` (resumes inside an
  epoch), and :class:`src.mm.preemption.PreemptionHook` stops a run on SIGTERM / SIGUSR1 with a checkpoint.
"""
import os
import os.path as osp
import sys
from typing import Iterator

import torch

from ..utils import precision
from ..utils.distributed import env_rank
from ..utils.errors import UsageError
from .checkpoints import find_resume_checkpoint, load_run_checkpoint

__all__ = ['DATALOADERS', 'EVALUATORS', 'prepare_config', 'set_data_root', 'check_data_paths']

DATALOADERS = {'train': ('train_dataloader', 'val_dataloader'), 'test': ('test_dataloader',)}
EVALUATORS = {'train': ('val_evaluator',), 'test': ('test_evaluator',)}


def _set_resume(cfg, resume: str) -> None:
    """Resume from ``resume`` (a path, or 'auto': the newest checkpoint of the work dir that loads), with
    the seed the checkpoint's run had."""
    if resume != 'auto':
        if not osp.isfile(resume):
            raise UsageError(f'checkpoint to resume from not found: {resume}')
        ckpt = load_run_checkpoint(resume)
    else:
        resume, ckpt = find_resume_checkpoint(cfg)
        if ckpt is None:
            if env_rank() == 0:
                print(f'resume: no checkpoint in {cfg.work_dir} yet, starting from scratch', file=sys.stderr,
                      flush=True)
            return
    cfg.resume, cfg.load_from = True, resume
    # the samplers and data workers are seeded before mmengine reads the checkpoint: give them its seed
    seed = ckpt['meta'].get('seed')
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)


EPOCH_LOOPS = ('EpochBasedTrainLoop', 'ExactEpochBasedTrainLoop')


def _by_epoch(cfg) -> bool:
    """Whether ``cfg`` trains with mmengine's EpochBasedTrainLoop (or ours, which resumes inside an epoch)."""
    train_cfg = cfg.get('train_cfg') or {}
    return train_cfg.get('type', 'EpochBasedTrainLoop' if train_cfg.get('by_epoch') else None) in EPOCH_LOOPS


def _datasets(cfg: dict) -> Iterator[dict]:
    """A dataset config and every dataset it wraps (RepeatDataset, ConcatDataset, ...)."""
    if not isinstance(cfg, dict):
        return
    yield cfg
    yield from _datasets(cfg.get('dataset'))
    for sub in cfg.get('datasets') or []:
        yield from _datasets(sub)


def _evaluators(cfg, keys) -> Iterator[dict]:
    for key in keys:
        ev = cfg.get(key)
        for e in ev if isinstance(ev, (list, tuple)) else [ev]:
            if isinstance(e, dict):
                yield e


def set_data_root(cfg, root: str) -> None:
    """Point every dataloader's dataset and every evaluator annotation file at ``root``."""
    old = cfg.get('data_root')
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for ds in _datasets((cfg.get(key) or {}).get('dataset')):
            if 'data_root' in ds or 'ann_file' in ds or 'data_prefix' in ds:
                ds['data_root'] = root
    for ev in _evaluators(cfg, ('val_evaluator', 'test_evaluator')):
        ann = ev.get('ann_file')
        if ann and old and osp.normpath(ann).startswith(osp.normpath(old) + os.sep):
            ev['ann_file'] = osp.join(root, osp.relpath(ann, old))
    cfg['data_root'] = root


def check_data_paths(cfg, mode: str) -> None:
    """Raise UsageError naming the first dataset folder or annotation file that does not exist."""
    loaders = [k for k in DATALOADERS[mode] if cfg.get(k) and (k != 'val_dataloader' or cfg.get('val_cfg'))]
    for key in loaders:
        for ds in _datasets(cfg[key].get('dataset')):
            root = ds.get('data_root')
            if root is not None and not osp.isdir(root):
                raise UsageError(f'dataset root not found: {root} (of {key}; set it with DATA_ROOT / --data-root)')
            ann = ds.get('ann_file')
            if ann:
                path = ann if osp.isabs(ann) or root is None else osp.join(root, ann)
                if not osp.isfile(path):
                    raise UsageError(f'annotation file not found: {path} (of {key})')
            for name, prefix in (ds.get('data_prefix') or {}).items():
                path = prefix if osp.isabs(prefix) or root is None else osp.join(root, prefix)
                if prefix and not osp.isdir(path):
                    raise UsageError(f'{name} folder not found: {path} (of {key})')
    for ev in _evaluators(cfg, EVALUATORS[mode] if loaders or mode == 'test' else ()):
        if ev.get('ann_file') and not osp.isfile(ev['ann_file']):
            raise UsageError(f'annotation file not found: {ev["ann_file"]} (of the evaluator)')


def _sync_bn_to_bn(node) -> None:
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for v in node.values():
            _sync_bn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _sync_bn_to_bn(v)


def prepare_config(args, task: str, mode: str):
    """Config from the command line: overrides, data root, work dir, AMP, resume, CPU/CUDA setup."""
    from mmengine.config import Config
    if not osp.isfile(args.config):
        raise UsageError(f'config not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    cuda = torch.cuda.is_available()
    if args.amp:  # CUDA: fp16 with loss scaling; CPU: bf16 where native (src/utils/precision.py), else fp32
        try:
            amp = cuda or precision.amp_dtype('cpu') is not None
        except ValueError as e:
            raise UsageError(str(e)) from None
        if amp and mode == 'test':
            cfg.test_cfg.fp16 = True  # mmengine's test loop autocasts: fp16 on CUDA, bf16 on CPU
        elif amp and cuda:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
        elif amp:
            from . import cpu_amp  # noqa: F401  registers CPUAutocastOptimWrapper (AmpOptimWrapper needs a GPU)
            cfg.optim_wrapper.type = 'CPUAutocastOptimWrapper'
            cfg.optim_wrapper.dtype = 'bfloat16'
    if mode == 'train':
        if args.auto_scale_lr:
            if not cfg.get('auto_scale_lr', {}).get('base_batch_size'):
                raise UsageError(f'--auto-scale-lr needs auto_scale_lr.base_batch_size in {args.config}')
            cfg.auto_scale_lr.enable = True
        if args.resume:
            _set_resume(cfg, args.resume)
        hook = (cfg.get('default_hooks') or {}).get('checkpoint')
        if hook and hook.get('type') == 'CheckpointHook':
            hook.type = 'SafeCheckpointHook'  # atomic, ordered saves with RNG states (src/mm/safe_runner.py)
        if hook and hook.get('type') == 'SafeCheckpointHook':  # SIGTERM / SIGUSR1: save and stop (src/mm/preemption.py)
            cfg.custom_hooks = [*(cfg.get('custom_hooks') or []), dict(type='PreemptionHook')]
        if _by_epoch(cfg) and cfg.train_cfg.get('type', 'EpochBasedTrainLoop') == 'EpochBasedTrainLoop':
            cfg.train_cfg.pop('by_epoch', None)
            cfg.train_cfg.type = 'ExactEpochBasedTrainLoop'  # resumes inside an epoch where it stopped
    else:
        cfg.load_from, cfg.resume = None, False  # test.py loads (and converts) the checkpoint itself
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(key) and (cfg[key].get('num_workers', 0) == 0 or key == 'train_dataloader' and _by_epoch(cfg)):
            # epoch loops: workers start each epoch seeded from (seed, rank, worker id) as a resumed epoch's do
            cfg[key].persistent_workers = False
    if not cuda:
        _sync_bn_to_bn(cfg.model)
        if args.launcher != 'none':
            cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
            cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None,
                                         broadcast_buffers=False,
                                         find_unused_parameters=cfg.get('find_unused_parameters', False))
    check_data_paths(cfg, mode)
    return cfg
