"""Reading the checkpoints of mmengine runs, and the release's mmdet 2.x / mmseg 0.x files, safely.

* Every checkpoint loads with ``weights_only=True``, mmengine's own run files (resume, test) too: they are
  allowed the few mmengine / numpy types they hold (:func:`run_checkpoint_globals`), nothing else.
* :func:`find_resume_checkpoint` takes the newest checkpoint of a work dir that loads (torn ones are named
  and skipped); :func:`load_run_checkpoint` refuses a file that is not a training run's.
* :func:`convert_legacy_checkpoint` converts files saved by mmdet 2.x / mmseg 0.x (``meta['CLASSES']``,
  DDP prefixes, the classifier ``norm`` / ``head`` of a ConvMLP backbone); every key is then loaded
  strictly (:func:`load_checkpoint_for_test`).

Writing them crash-safe is :mod:`src.mm.safe_runner`'s.
"""
import contextlib
import os
import os.path as osp
import re
import sys
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..utils.distributed import env_rank
from ..weights import CheckpointError, load_checkpoint_file, state_dict_mismatch, unwrap_state_dict

__all__ = ['LEGACY_RENAMES', 'PREEMPTED_CHECKPOINT', 'run_checkpoint_globals', 'run_checkpoints_loadable',
           'convert_legacy_checkpoint', 'load_run_checkpoint', 'run_checkpoints', 'find_resume_checkpoint',
           'load_checkpoint_for_test']

# The checkpoint of a run stopped by SIGTERM / SIGUSR1 (src/mm/preemption.py), wherever it stood (inside an
# epoch too), beside the CheckpointHook's; the next regular checkpoint removes it.
PREEMPTED_CHECKPOINT = 'preempted.pth'

# Keys renamed between mmdet 2.x and 3.x / mmseg 0.x and 1.x in the modules these configs use, as
# (old prefix, new prefix). Comparing the parameter-holding attributes of RetinaHead, AnchorHead,
# RPNHead, FPN, StandardRoIHead, Shared2FCBBoxHead, FCNMaskHead (mmdet 2.28.2 vs 3.3.0) and FPN,
# FPNHead, BaseDecodeHead, EncoderDecoder (mmseg 0.30.0 vs 1.2.2) found none: the table is empty, and
# conversion is the checkpoint layout (meta, wrappers) plus the backbone's classifier keys.
LEGACY_RENAMES: Dict[str, List[Tuple[str, str]]] = {'detection': [], 'segmentation': []}


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
def run_checkpoints_loadable() -> Iterator[None]:
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
    with run_checkpoints_loadable():
        ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt.get('meta'), dict) or 'iter' not in ckpt['meta'] or 'state_dict' not in ckpt:
        raise CheckpointError(f'{path} is not a checkpoint of a training run (no meta.iter / state_dict); '
                              f'start from its weights with --cfg-options load_from={path} instead of --resume')
    return ckpt


def _numbered_checkpoints(cfg) -> Tuple[str, bool, List[Tuple[int, str]]]:
    """(folder, by_epoch, [(number, path), ...] newest first) of the checkpoints ``cfg``'s CheckpointHook saved
    (its folder and file name template)."""
    hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
    folder = cfg.work_dir
    if hook.get('out_dir') and hook['out_dir'] != cfg.work_dir:  # as CheckpointHook.before_train joins them
        folder = osp.join(hook['out_dir'], osp.basename(cfg.work_dir.rstrip(osp.sep)))
    by_epoch = hook.get('by_epoch', True)
    template = hook.get('filename_tmpl') or ('epoch_{}.pth' if by_epoch else 'iter_{}.pth')
    pattern = re.compile(re.escape(template).replace(r'\{\}', r'(\d+)'))
    found = [(int(m.group(1)), osp.join(folder, name)) for name in (os.listdir(folder) if osp.isdir(folder) else [])
             if (m := pattern.fullmatch(name))]
    return folder, by_epoch, sorted(found, reverse=True)


def run_checkpoints(cfg) -> List[str]:
    """The checkpoints ``cfg``'s CheckpointHook saved (its folder and file name template), newest first."""
    return [path for _, path in _numbered_checkpoints(cfg)[2]]


def find_resume_checkpoint(cfg) -> Tuple[Optional[str], Optional[dict]]:
    """The newest checkpoint of ``cfg``'s work dir that loads, as (path, checkpoint); the ones that do not
    are named on stderr (rank 0) and skipped. A preempted run's :data:`PREEMPTED_CHECKPOINT` counts by
    where it stood (its ``meta``: inside epoch E+1 is newer than ``epoch_E.pth``, iteration I than
    ``iter_{I-1}.pth``). (None, None) in a work dir without checkpoints; raises CheckpointError when there
    are some and none loads."""
    rank0 = env_rank() == 0
    errors = []

    def load(path: str) -> Optional[dict]:
        try:
            return load_run_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            if rank0:
                print(f'warning: resume: skipping {e}', file=sys.stderr, flush=True)
            return None

    folder, by_epoch, found = _numbered_checkpoints(cfg)
    candidates = [(float(n), path, None) for n, path in found]
    preempted = osp.join(folder, PREEMPTED_CHECKPOINT)
    if osp.isfile(preempted) and (ckpt := load(preempted)) is not None:
        meta = ckpt['meta']  # a regular checkpoint of the same point wins
        candidates.append((meta['epoch'] + 0.5 if by_epoch else meta['iter'] - 0.5, preempted, ckpt))
    for _, path, ckpt in sorted(candidates, key=lambda c: c[0], reverse=True):
        ckpt = ckpt or load(path)
        if ckpt is not None:
            return path, ckpt
    if errors:
        raise CheckpointError(f'no checkpoint of {cfg.work_dir} loads ({len(errors)} tried, the newest: '
                              f'{errors[0]}); start anew without --resume')
    return None, None


def load_checkpoint_for_test(path: str, model: torch.nn.Module, task: str) -> Optional[dict]:
    """Load ``path`` strictly into ``model`` (converted if old layout); returns its dataset meta."""
    with run_checkpoints_loadable():
        ckpt = load_checkpoint_file(path)
    sd, dataset_meta = convert_legacy_checkpoint(ckpt, model, task)
    model.load_state_dict(sd, strict=True)
    return dataset_meta
