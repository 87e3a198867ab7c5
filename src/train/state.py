"""Training checkpoints: what they hold, where they go, how a run resumes from them.

Files of a run folder (all written with :func:`src.utils.atomic.atomic_save`, so a crash while saving leaves the
previous file intact)::

    checkpoint-E.pth.tar   state after epoch E (the newest ``keep`` are kept)
    recovery.pth.tar       state inside an epoch, every ``--checkpoint-interval`` steps
    last.pth.tar           the newest of the above (hard link, or copy where links are not supported)
    best.pth.tar           the epoch checkpoint with the best top-1

A checkpoint holds model, EMA, optimizer, scheduler and scaler states, the position (``epoch`` = epochs
done, ``step`` = steps done in the next one), every process's RNG states, the summary rows so far, the
class names (an ImageFolder's folders) and the arguments. It is made of tensors and plain Python values
only, so it loads with ``weights_only=True`` (through :func:`src.weights.load_checkpoint_file`, which
reports a truncated file with its path and size).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn

from ..utils.atomic import atomic_save, atomic_write
from ..weights import CheckpointError, load_checkpoint_file, load_state_dict, state_dict_mismatch

__all__ = ['CheckpointFiles', 'find_resume_checkpoint', 'load_weights']

_log = logging.getLogger('train')
FORMAT = 'convmlp-train-1'


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` atomically (hard link, or a copy where links fail)."""
    tmp = dst.with_name(f'.{dst.name}.link')
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        with atomic_write(dst) as f, open(src, 'rb') as s:
            shutil.copyfileobj(s, f)


class CheckpointFiles:
    """Saves the checkpoints of one run folder (see module docstring)."""

    def __init__(self, run_dir: Union[str, Path], keep: int = 2):
        self.dir = Path(run_dir)
        self.keep = max(1, keep)

    def save_epoch(self, state: dict, epoch: int, is_best: bool) -> Path:
        path = self.dir / f'checkpoint-{epoch}.pth.tar'
        atomic_save(state, path)
        _link(path, self.dir / 'last.pth.tar')
        if is_best:
            _link(path, self.dir / 'best.pth.tar')
        for old in self.epoch_checkpoints()[self.keep:]:
            old.unlink()
        return path

    def save_recovery(self, state: dict) -> Path:
        path = self.dir / 'recovery.pth.tar'
        atomic_save(state, path)
        _link(path, self.dir / 'last.pth.tar')
        return path

    def epoch_checkpoints(self) -> List[Path]:
        """``checkpoint-E.pth.tar`` files, newest epoch first."""
        files = [p for p in self.dir.glob('checkpoint-*.pth.tar') if p.name[11:-8].isdigit()]
        return sorted(files, key=lambda p: int(p.name[11:-8]), reverse=True)


def load_training_state(path: Union[str, Path]) -> dict:
    """A checkpoint written by this trainer (raises :class:`CheckpointError` naming path and size)."""
    state = load_checkpoint_file(path)
    if state.get('format') != FORMAT:
        raise CheckpointError(f'{path} is not a training checkpoint of classification.py (no optimizer / '
                              f'position in it): use --initial-checkpoint to start from its weights')
    return state


def find_resume_checkpoint(run_dir: Union[str, Path]) -> Optional[dict]:
    """The newest checkpoint of ``run_dir`` that loads, skipping (and logging) broken ones. None if the
    folder has no checkpoint; :class:`CheckpointError` if it has some and none loads."""
    run_dir = Path(run_dir)
    names = ('last.pth.tar', 'recovery.pth.tar')
    files = [run_dir / n for n in names if (run_dir / n).is_file()] + CheckpointFiles(run_dir).epoch_checkpoints()
    files = sorted(set(files), key=lambda p: (p.stat().st_mtime, p.name == 'last.pth.tar'), reverse=True)
    errors = []
    for path in files:
        try:
            state = load_training_state(path)
        except CheckpointError as e:
            _log.warning(f'resume: skipping {e}')
            errors.append(str(e))
            continue
        state['path'] = str(path)
        return state
    if errors:
        raise CheckpointError(f'no checkpoint in {run_dir} loads: ' + '; '.join(errors))
    return None


def load_weights(model: nn.Module, source: str, use_ema: bool = False) -> None:
    """Load weights from a path, URL or zoo name into ``model`` (``weights_only=True``). A classifier whose
    shape differs is left freshly initialised (fine-tuning); any other mismatch is an error."""
    try:
        sd = load_state_dict(source, progress=True, use_ema=use_ema)
    except KeyError as e:  # neither a file, a URL nor a zoo name
        raise CheckpointError(f'weights {source!r} not found: not a file, URL or zoo name ({e.args[0]})') from None
    own = model.state_dict()
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier', 'head')
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    is_head = lambda k: any(k.startswith(c + '.') for c in classifiers)  # noqa: E731
    dropped = [k for k in sd if is_head(k) and k in own and sd[k].shape != own[k].shape]
    if dropped:
        _log.warning(f'{source}: classifier {tuple(sd[dropped[0]].shape)} does not fit the model\'s '
                     f'{tuple(own[dropped[0]].shape)}: left freshly initialised')
    sd = {k: v for k, v in sd.items() if k not in dropped}
    problem = state_dict_mismatch(own, sd, optional=tuple(c + '.' for c in classifiers))
    if problem:
        raise CheckpointError(f'weights {source} do not fit {type(model).__name__}: {problem}')
    model.load_state_dict(sd, strict=False)


def state_dict_of(model: nn.Module) -> Dict[str, torch.Tensor]:
    """State dict without DDP's ``module.`` wrapper."""
    return getattr(model, 'module', model).state_dict()
