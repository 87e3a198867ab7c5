"""Train and test entry points on mmengine's Runner, shared by detection (mmdet 3.x) and segmentation
(mmseg 1.x): ``detection/{train,test}.py`` and ``segmentation/{train,test}.py`` only call :func:`main`.

What this adds to a plain ``Runner.from_cfg``:

* ``--data-root DIR`` points every dataloader and evaluator of the config at one dataset folder, and
  the data paths are checked before anything is built (one clear error naming the missing path).
* CPU: ``--launcher pytorch`` initialises a gloo process group itself (mmengine's init_dist would call
  ``torch.cuda.set_device``), DDP gets ``device_ids=None``, and SyncBN becomes BN (SyncBN needs CUDA).
  On CUDA, SyncBN stays and mmengine sets up NCCL as usual.
* Every checkpoint loads with ``weights_only=True``, mmengine's own run files (resume, test) too: they
  are allowed the few mmengine/numpy types they hold (:func:`run_checkpoint_globals`), nothing else.
* Training checkpoints are crash-safe and resume exactly (:mod:`src.run_checkpoints`): written atomically,
  ``last_checkpoint`` updated and old files removed only after, every process's RNG states inside. A bare
  ``--resume`` takes the newest checkpoint that loads (torn ones are named and skipped) and its seed.
* ``test.py`` converts checkpoints saved by mmdet 2.x / mmseg 0.x (``meta['CLASSES']``, DDP prefixes,
  the classifier ``norm``/``head`` of a ConvMLP backbone) and loads every key strictly.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import os.path as osp
import re
import sys
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from . import precision
from .malloc import keep_freed_memory
from .weights import CheckpointError, load_checkpoint_file, state_dict_mismatch, unwrap_state_dict

__all__ = ['main', 'UsageError', 'prepare_config', 'set_data_root', 'check_data_paths',
           'convert_legacy_checkpoint', 'run_checkpoint_globals', 'load_run_checkpoint', 'run_checkpoints']

METRIC_NAMES = {'detection': 'COCO bbox/segm AP', 'segmentation': 'mIoU'}
DATALOADERS = {'train': ('train_dataloader', 'val_dataloader'), 'test': ('test_dataloader',)}
EVALUATORS = {'train': ('val_evaluator',), 'test': ('test_evaluator',)}

# Keys renamed between mmdet 2.x and 3.x / mmseg 0.x and 1.x in the modules these configs use, as
# (old prefix, new prefix). Comparing the parameter-holding attributes of RetinaHead, AnchorHead,
# RPNHead, FPN, StandardRoIHead, Shared2FCBBoxHead, FCNMaskHead (mmdet 2.28.2 vs 3.3.0) and FPN,
# FPNHead, BaseDecodeHead, EncoderDecoder (mmseg 0.30.0 vs 1.2.2) found none: the table is empty, and
# conversion is the checkpoint layout (meta, wrappers) plus the backbone's classifier keys.
LEGACY_RENAMES: Dict[str, List[Tuple[str, str]]] = {'detection': [], 'segmentation': []}


class UsageError(Exception):
    """Bad input that the user can fix: reported as one line, exit code 2."""


# ---- checkpoints ---------------------------------------------------------------------------------
def _history_buffer_getattr(obj, name: str):
    """The only ``getattr`` mmengine's run files need: HistoryBuffer's statistics methods."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in ('min', 'max', 'current', 'mean'):
        return getattr(obj, name)
    raise CheckpointError(f'checkpoint asks for getattr({obj!r}, {name!r}) when unpickled: refused')


def run_checkpoint_globals() -> list:
    """What mmengine's run files hold besides tensors (message hub history, numpy arrays, a Counter),
    for ``torch.serialization.safe_globals``: the classes themselves, and under the name
    ``builtins.getattr`` a getattr that only returns HistoryBuffer's statistics methods."""
    import collections

    import numpy as np
    from mmengine.logging import HistoryBuffer
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:
        from numpy.core import multiarray
    allowed = [HistoryBuffer, collections.Counter, np.ndarray, np.dtype,
               *{type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'uint8', 'bool')}]
    for name in ('builtins.getattr', '__builtin__.getattr'):
        allowed.append((_history_buffer_getattr, name))
    for package in ('numpy.core', 'numpy._core'):  # pickled by numpy 1.x / 2.x
        allowed += [(multiarray._reconstruct, f'{package}.multiarray._reconstruct'),
                    (multiarray.scalar, f'{package}.multiarray.scalar')]
    return allowed


@contextlib.contextmanager
def _run_checkpoints_loadable() -> Iterator[None]:
    """``torch.load(weights_only=True)`` (torch's default, used by mmengine) accepts mmengine's run files."""
    with torch.serialization.safe_globals(run_checkpoint_globals()):
        yield


def convert_legacy_checkpoint(ckpt: dict, model: torch.nn.Module, task: str) -> Tuple[dict, Optional[dict]]:
    """State dict and dataset meta for ``model`` from a checkpoint of mmdet 2.x/3.x or mmseg 0.x/1.x.

    Handles ``{'meta', 'state_dict'}`` and bare state dicts, DDP ``module.`` prefixes, the renames of
    :data:`LEGACY_RENAMES`, and ``backbone.norm``/``backbone.head`` (a classifier's, unused by the
    dense backbone). Every model key must then be present with its shape: raises CheckpointError."""
    sd = unwrap_state_dict(ckpt)
    for old, new in LEGACY_RENAMES[task]:
        sd = {new + k[len(old):] if k.startswith(old) else k: v for k, v in sd.items()}
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(('backbone.norm.', 'backbone.head.'))}
    problem = state_dict_mismatch(own, sd)
    if problem:
        raise CheckpointError(f'checkpoint does not fit this model (other config or variant?): {problem}')
    meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else {}
    dataset_meta = meta.get('dataset_meta')
    if dataset_meta is None and meta.get('CLASSES') is not None:  # mmdet 2.x / mmseg 0.x
        dataset_meta = dict(classes=tuple(meta['CLASSES']))
        if meta.get('PALETTE') is not None:
            dataset_meta['palette'] = [tuple(c) for c in meta['PALETTE']]
    return sd, dataset_meta


def load_run_checkpoint(path: str) -> dict:
    """A checkpoint mmengine's Runner can resume from, loaded with ``weights_only=True``; raises
    CheckpointError (naming the file and its size if it is torn) otherwise."""
    with _run_checkpoints_loadable():
        ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt.get('meta'), dict) or 'iter' not in ckpt['meta'] or 'state_dict' not in ckpt:
        raise CheckpointError(f'{path} is not a checkpoint of a training run (no meta.iter / state_dict); '
                              f'start from its weights with --cfg-options load_from={path} instead of --resume')
    return ckpt


def run_checkpoints(cfg) -> List[str]:
    """The checkpoints ``cfg``'s CheckpointHook saved (its folder and file name template), newest first."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    folder = cfg.work_dir
    if hook.get('out_dir') and hook['out_dir'] != cfg.work_dir:  # as CheckpointHook.before_train joins them
        folder = osp.join(hook['out_dir'], osp.basename(cfg.work_dir.rstrip(osp.sep)))
    template = hook.get('filename_tmpl') or ('epoch_{}.pth' if hook.get('by_epoch', True) else 'iter_{}.pth')
    pattern = re.compile(re.escape(template).replace(r'\{\}', r'(\d+)'))
    found = [(int(m.group(1)), osp.join(folder, name)) for name in (os.listdir(folder) if osp.isdir(folder) else [])
             if (m := pattern.fullmatch(name))]
    return [path for _, path in sorted(found, reverse=True)]


def _set_resume(cfg, resume: str) -> None:
    """Resume from ``resume`` (a path, or 'auto': the newest checkpoint of the work dir that loads; the
    ones that do not are named and skipped), with the seed the checkpoint's run had."""
    rank0 = int(os.environ.get('RANK', 0)) == 0
    if resume != 'auto':
        if not osp.isfile(resume):
            raise UsageError(f'checkpoint to resume from not found: {resume}')
        ckpt = load_run_checkpoint(resume)
    else:
        ckpt, errors = None, []
        for resume in run_checkpoints(cfg):
            try:
                ckpt = load_run_checkpoint(resume)
                break
            except CheckpointError as e:
                errors.append(str(e))
                if rank0:
                    print(f'warning: resume: skipping {e}', file=sys.stderr, flush=True)
        if ckpt is None:
            if errors:
                raise CheckpointError(f'no checkpoint of {cfg.work_dir} loads ({len(errors)} tried, the newest: '
                                      f'{errors[0]}); start anew without --resume')
            if rank0:
                print(f'resume: no checkpoint in {cfg.work_dir} yet, starting from scratch', file=sys.stderr,
                      flush=True)
            return
    cfg.resume, cfg.load_from = True, resume
    # the samplers and data workers are seeded before mmengine reads the checkpoint: give them its seed
    seed = ckpt['meta'].get('seed')
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)


def _by_epoch(cfg) -> bool:
    """Whether ``cfg`` trains with mmengine's EpochBasedTrainLoop."""
    train_cfg = cfg.get('train_cfg') or {}
    return train_cfg.get('type', 'EpochBasedTrainLoop' if train_cfg.get('by_epoch') else None) == 'EpochBasedTrainLoop'


def load_checkpoint_for_test(path: str, model: torch.nn.Module, task: str) -> Optional[dict]:
    """Load ``path`` strictly into ``model`` (converted if old layout); returns its dataset meta."""
    with _run_checkpoints_loadable():
        ckpt = load_checkpoint_file(path)
    sd, dataset_meta = convert_legacy_checkpoint(ckpt, model, task)
    model.load_state_dict(sd, strict=True)
    return dataset_meta


# ---- config --------------------------------------------------------------------------------------
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
    if args.amp:  # CUDA: fp16 with loss scaling; CPU: bf16 where native (src/precision.py), else fp32
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
            from . import mmamp  # noqa: F401  registers CPUAutocastOptimWrapper (AmpOptimWrapper needs a GPU)
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
            hook.type = 'SafeCheckpointHook'  # atomic, ordered saves with RNG states (src/run_checkpoints.py)
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


def _init_distributed(launcher: str) -> None:
    """On CPU, join the gloo group before mmengine would try (it calls torch.cuda.set_device)."""
    import torch.distributed as dist
    if launcher == 'none' or torch.cuda.is_available() or dist.is_initialized():
        return
    if launcher != 'pytorch':
        raise UsageError(f'--launcher {launcher} needs CUDA; on CPU use torchrun with --launcher pytorch')
    if 'RANK' not in os.environ:
        raise UsageError('--launcher pytorch expects to be started by torchrun (RANK is not set)')
    dist.init_process_group('gloo')


# ---- command line --------------------------------------------------------------------------------
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
                   help='job launcher (pytorch = torchrun)')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _format_metrics(metrics: dict) -> str:
    return '\n'.join(f'{k}: {v:.4f}' if isinstance(v, float) else f'{k}: {v}' for k, v in metrics.items())


def main(task: str, mode: str, argv=None) -> int:
    """``{task}/{mode}.py`` (task 'detection'|'segmentation', mode 'train'|'test'); returns the exit code."""
    import torch.distributed as dist
    args = parse_args(task, mode, argv)
    try:
        cfg = prepare_config(args, task, mode)
        if not torch.cuda.is_available():
            try:
                keep_freed_memory()  # no page faults for every step's activations (src/malloc.py)
            except ValueError as e:
                raise UsageError(str(e)) from None
        _init_distributed(args.launcher)
        return _run(cfg, args, task, mode)
    except (UsageError, CheckpointError) as e:
        if int(os.environ.get('RANK', 0)) == 0:
            print(f'error: {e}', file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():  # gloo left to interpreter exit can abort a rank ("terminate called")
            if sys.exc_info()[0] is None:
                dist.barrier()
            dist.destroy_process_group()


def _run(cfg, args, task: str, mode: str) -> int:
    from mmengine.model import is_model_wrapper
    from .run_checkpoints import SafeRunner  # also registers SafeCheckpointHook
    runner = SafeRunner.from_cfg(copy.deepcopy(cfg))
    with _run_checkpoints_loadable():
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
    if runner.rank == 0:
        print(f'{METRIC_NAMES[task]} of {args.checkpoint}:\n{_format_metrics(metrics)}', flush=True)
    return 0
