"""Crash-safe checkpoints and exact resume for the mmengine runs of detection and segmentation
(:mod:`src.mm.run` trains with these in place of mmengine's ``Runner`` and ``CheckpointHook``).

mmengine alone writes a checkpoint in place, deletes the oldest one *before* writing the new one, and
keeps no RNG state: a kill while saving can leave a torn file with its predecessor gone, and a resumed
run draws other dropout / drop-path masks and augmentations than the run never interrupted. Here:

* :class:`SafeRunner` writes every checkpoint through :func:`src.utils.atomic.atomic_write` (temporary file
  beside it, fsync, rename): a file under a checkpoint's name is always complete.
* :class:`SafeCheckpointHook` saves in a crash-safe order: the new checkpoint, then the
  ``last_checkpoint`` pointer (atomically too), and only then the checkpoints beyond ``max_keep_ckpts``
  are removed. Every checkpoint holds every process's RNG states (python, numpy, torch, CUDA) in
  ``meta['rng_states']`` (one entry per rank, plain tensors: loads with ``weights_only=True``).
* :meth:`SafeCheckpointHook.save_preempted` writes the checkpoint of a run stopped by a signal
  (:mod:`src.mm.preemption`) wherever it stands, inside an epoch too, through the same ordered save:
  ``preempted.pth`` (:data:`src.mm.checkpoints.PREEMPTED_CHECKPOINT`), removed by the next regular save.
* :class:`ExactEpochBasedTrainLoop` (configs' EpochBasedTrainLoop is replaced by it) resumes inside an
  epoch: mmengine restarts the epoch from its first batch; this loop draws the batches already trained from
  the dataloader without training on them (as mmengine's IterBasedTrainLoop skips its trained iterations),
  then trains on from the next.
* On resume the hook puts this process's states back where the run saved them: before the next epoch's
  data (epoch loops), or once the batches already trained have been drawn again (iteration loops, and
  epoch loops resumed inside an epoch). Validation leaves the RNG states as it found them, so the state
  saved before it is the state training continues from. Sampler order is a function of (seed, epoch) in
  mmengine, and data workers are seeded from (seed, rank, worker id), so with the run's seed
  (:mod:`src.mm.config` takes it from the checkpoint) a run killed anywhere, or stopped by a signal, and
  resumed ends bit for bit as the run never interrupted (same process count).

The runner also formats its config once (:class:`FormattedOnceConfig`) rather than at every checkpoint.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import os.path as osp
from collections import deque
from typing import Iterator, Optional

import torch

from mmengine.config import Config
from mmengine.dist import all_gather_object, is_main_process, master_only
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS, LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from mmengine.utils import apply_to

from ..utils.atomic import atomic_write
from ..utils.rng import rng_state, set_rng_state
from .checkpoints import PREEMPTED_CHECKPOINT

__all__ = ['ExactEpochBasedTrainLoop', 'FormattedOnceConfig', 'SafeCheckpointHook', 'SafeRunner', 'RNG_KEY']

RNG_KEY = 'rng_states'  # in a checkpoint's meta: [rank 0's states, rank 1's, ...]


class FormattedOnceConfig(Config):
    """mmengine's Config whose :attr:`pretty_text` runs the yapf formatter once for each content. mmengine's
    runner asks for the text four times as it starts (log, work dir, message hub, visualizer) and once in
    every checkpoint, and formatting a detection or segmentation config takes 0.25 s (AVX2-only EPYC, 2
    cores); the runner may change its config while it runs, so the text before formatting (milliseconds to
    make) decides whether the formatted one still holds."""

    @classmethod
    def of(cls, cfg: Config) -> 'FormattedOnceConfig':
        """``cfg`` itself (its settings shared, not copied) as a FormattedOnceConfig."""
        same = cls.__new__(cls)
        same.__dict__.update(cfg.__dict__)
        return same

    @property
    def pretty_text(self) -> str:
        formatting = self._format_python_code
        object.__setattr__(self, '_format_python_code', False)  # Config's own __setattr__ sets config keys
        try:
            text = Config.pretty_text.fget(self)
        finally:
            object.__setattr__(self, '_format_python_code', formatting)
        if not formatting:
            return text
        if self.__dict__.get('_formatted_from') != text:
            object.__setattr__(self, '_formatted', Config.pretty_text.fget(self))
            object.__setattr__(self, '_formatted_from', text)
        return self._formatted


class SafeRunner(Runner):
    """mmengine's Runner whose checkpoints are written atomically (local folders; other storage
    backends as mmengine writes them), which tells :class:`SafeCheckpointHook` it is resuming, and
    whose config is a :class:`FormattedOnceConfig`."""

    resuming = False

    @classmethod
    def from_cfg(cls, cfg) -> 'SafeRunner':
        return super().from_cfg(FormattedOnceConfig.of(cfg if isinstance(cfg, Config) else Config(cfg)))

    def resume(self, filename: str, *args, **kwargs) -> None:
        self.resuming = True
        super().resume(filename, *args, **kwargs)

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, file_client_args=None, *args, backend_args=None,
                        **kwargs) -> None:
        if file_client_args is not None or backend_args is not None or '://' in out_dir:
            super().save_checkpoint(out_dir, filename, file_client_args, *args, backend_args=backend_args, **kwargs)
            return
        with atomic_write(osp.join(out_dir, filename)) as f:  # mmengine writes the temporary file by name
            super().save_checkpoint(out_dir, osp.basename(f.name), None, *args, **kwargs)


class _RestoreRngAfter:
    """Stands in for an IterBasedTrainLoop's data iterator: passes ``skip`` batches through (mmengine's
    fast-forward past trained data), then sets ``state`` before the next one and steps aside."""

    def __init__(self, loop: IterBasedTrainLoop, skip: int, state: dict):
        self.loop, self.iterator, self.left, self.state = loop, loop.dataloader_iterator, skip, state

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self.left == 0:
            set_rng_state(self.state)
            self.loop.dataloader_iterator = self.iterator
        self.left -= 1
        return next(self.iterator)


@LOOPS.register_module()
class ExactEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's EpochBasedTrainLoop (same arguments) that resumes inside an epoch where it stopped: the
    epoch's batches already trained are drawn from the dataloader again without training (their loading and
    augmentation is the cost), then :attr:`rng_after_replay` (the resumed checkpoint's RNG states, set by
    :class:`SafeCheckpointHook`) is put back and training goes on from the next batch."""

    rng_after_replay: Optional[dict] = None

    @property
    def batches_to_replay(self) -> int:
        """Batches of the current epoch already trained (0 but in the first epoch of a run resumed inside one)."""
        done = self._iter - self._epoch * len(self.dataloader)
        return done if 0 < done <= len(self.dataloader) else 0

    def run_epoch(self) -> None:
        skip = self.batches_to_replay
        if not skip:
            return super().run_epoch()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        print_log(f'Advance dataloader {skip} steps to skip data that has already been trained in epoch '
                  f'{self._epoch + 1}', logger='current', level=logging.WARNING)
        batches = iter(self.dataloader)
        for _ in range(skip):
            next(batches)
        if self.rng_after_replay is not None:
            set_rng_state(self.rng_after_replay)
            self.rng_after_replay = None
        for idx, data_batch in enumerate(batches, start=skip):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook (same arguments) with crash-safe saving and exact resume (see module
    docstring). Needs :class:`SafeRunner` for atomic files and to restore RNG states on resume."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rng_to_save: Optional[list] = None     # every rank's states for the save in progress
        self._rng_before_val: Optional[dict] = None  # this rank's states when validation began
        self._rng_to_restore: Optional[dict] = None  # this rank's states from the resumed checkpoint

    # ---- saving ----------------------------------------------------------------------------------
    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and '://' not in self.out_dir:
            self._remove_unfinished(runner)

    def _remove_unfinished(self, runner) -> None:
        """Temporary files left by a save that was killed (:func:`atomic_write` names them .NAME.*.tmp)."""
        patterns = [f'.{self.filename_tmpl.format("*")}.*.tmp', '.last_checkpoint.*.tmp']
        for folder in {self.out_dir, runner.work_dir}:
            for name in sorted(os.listdir(folder)) if osp.isdir(folder) else []:
                if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                    path = osp.join(folder, name)
                    runner.logger.warning(f'removing {path} ({osp.getsize(path)} bytes): unfinished '
                                          f'checkpoint of an interrupted save')
                    os.remove(path)

    def _training_rng(self) -> dict:
        """This process's RNG states as training will continue from them (validation does not count)."""
        return self._rng_before_val if self._rng_before_val is not None else rng_state()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['meta'][RNG_KEY], self._rng_to_save = self._rng_to_save, None  # gathered for this save only

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        """mmengine's save, reordered: the new file (atomic), then ``last_checkpoint``, then removals."""
        self._rng_to_save = all_gather_object(self._training_rng())  # every rank takes part
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        stale = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            ids = [*self.keep_ckpt_ids, step]
            stale = ids[:-self.max_keep_ckpts]
            self.keep_ckpt_ids = deque(ids[-self.max_keep_ckpts:], self.max_keep_ckpts)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        runner.save_checkpoint(self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        with atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
            f.write(self.last_ckpt)
        for path in [self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old)) for old in stale] + \
                [self.file_backend.join_path(self.out_dir, PREEMPTED_CHECKPOINT)]:  # superseded by this one
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are folders
                self.file_backend.rmtree(path)

    def save_preempted(self, runner) -> str:
        """Save the run where it stands after a training iteration, inside an epoch too (every rank takes
        part), as :data:`PREEMPTED_CHECKPOINT`: the file, then ``last_checkpoint``. Returns its path, or the
        path of the checkpoint this hook saved after this very iteration (nothing more to save)."""
        if not self.by_epoch and self.last_ckpt == self.file_backend.join_path(
                self.out_dir, self.filename_tmpl.format(runner.iter + 1)):
            return self.last_ckpt
        self._rng_to_save = all_gather_object(self._training_rng())
        path = self.file_backend.join_path(self.out_dir, PREEMPTED_CHECKPOINT)
        runner.save_checkpoint(self.out_dir, PREEMPTED_CHECKPOINT, self.file_client_args,
                               save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
                               meta=dict(epoch=runner.epoch, iter=runner.iter + 1), by_epoch=False,
                               backend_args=self.backend_args, **self.args)
        if is_main_process():
            with atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), 'w') as f:
                f.write(path)
        return path

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if self.save_best is not None:
            self._rng_to_save = all_gather_object(self._training_rng())
        super()._save_best_checkpoint(runner, metrics)

    # ---- validation leaves the RNG states alone --------------------------------------------------
    def before_val(self, runner) -> None:
        self._rng_before_val = rng_state()

    def after_val(self, runner) -> None:
        set_rng_state(self._rng_before_val)
        self._rng_before_val = None

    # ---- resuming --------------------------------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, 'resuming', False):  # load_from (fine-tuning) starts a new sequence
            return
        meta, loop = checkpoint['meta'], runner.train_loop
        if isinstance(loop, EpochBasedTrainLoop) and not isinstance(loop, ExactEpochBasedTrainLoop) \
                and meta['iter'] != meta['epoch'] * len(loop.dataloader):
            runner.logger.warning(f'the checkpoint was saved inside epoch {meta["epoch"] + 1} (iteration '
                                  f'{meta["iter"]}): mmengine restarts that epoch from its first batch, so the '
                                  f'resumed run differs from the run never interrupted (save at epoch ends)')
        states = meta.get(RNG_KEY)
        if states is None:
            runner.logger.warning('the checkpoint holds no RNG states (not saved by SafeCheckpointHook): the '
                                  'resumed run draws other random numbers than the run never interrupted')
        elif len(states) != runner.world_size:
            runner.logger.warning(f'the checkpoint was saved by {len(states)} processes, this run has '
                                  f'{runner.world_size}: RNG states not restored (resume is not exact)')
        else:
            self._rng_to_restore = apply_to(states[runner.rank], torch.is_tensor, lambda t: t.cpu())

    def before_train_epoch(self, runner) -> None:
        if self._rng_to_restore is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:  # mmengine skips trained batches next
            loop.dataloader_iterator = _RestoreRngAfter(loop, loop.iter, self._rng_to_restore)
        elif isinstance(loop, ExactEpochBasedTrainLoop) and loop.batches_to_replay:  # so does this loop
            loop.rng_after_replay = self._rng_to_restore
        else:
            set_rng_state(self._rng_to_restore)
        self._rng_to_restore = None
