"""SIGTERM and SIGUSR1 in the detection and segmentation runs: :class:`PreemptionHook` (added to every
training config by :mod:`src.mm.config`).

From ``before_train`` on, the signals set a flag (:class:`src.utils.preemption.Preemption`). After every
training iteration (with ``optim_wrapper.accumulative_counts`` > 1, after the last iteration of each
accumulation window: gradients half accumulated are not part of a checkpoint) every process asks whether any
of them got one, the same collective call at the same point. If so: one checkpoint of the run where it
stands (:meth:`src.mm.safe_runner.SafeCheckpointHook.save_preempted`: ``preempted.pth`` with every
process's RNG states, inside an epoch too), the main process tells the launcher
(:meth:`~src.utils.preemption.Preemption.mark_preempted`), every process waits for the others, and
:class:`~src.utils.preemption.Preempted` ends the run: ``detection/train.py`` and ``segmentation/train.py``
exit with code 75. ``--resume`` continues from that checkpoint, bit for bit as the run never interrupted
(:class:`~src.mm.safe_runner.ExactEpochBasedTrainLoop` for epoch schedules).

A stop at an iteration after which validation was due skips that validation: the resumed run trains on
(the weights are the same; that evaluation's numbers are missing from the logs).
"""
from mmengine.dist import barrier, get_comm_device, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

from ..utils.preemption import EXIT_PREEMPTED, Preempted, Preemption
from .safe_runner import SafeCheckpointHook

__all__ = ['PreemptionHook']


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Stop the run at the first iteration after SIGTERM / SIGUSR1 with one checkpoint (see module
    docstring). Needs the run's :class:`SafeCheckpointHook`; without one the signals end the run as usual."""

    priority = 'LOWEST'  # after the iteration's logging, scheduler step and regular checkpoint

    def __init__(self):
        self._preemption = None

    def before_train(self, runner) -> None:
        if not any(isinstance(h, SafeCheckpointHook) for h in runner.hooks):
            runner.logger.warning('no SafeCheckpointHook in this run: SIGTERM / SIGUSR1 end it without a checkpoint')
            return
        self._preemption = Preemption(device=get_comm_device()).__enter__()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._preemption is None:
            return
        window = getattr(runner.optim_wrapper, '_accumulative_counts', 1)
        if (runner.iter + 1) % window or not self._preemption.requested():
            return
        checkpoint = next(h for h in runner.hooks if isinstance(h, SafeCheckpointHook))
        path = checkpoint.save_preempted(runner)
        loop = runner.train_loop
        if isinstance(loop, EpochBasedTrainLoop):
            where = f'epoch {runner.epoch + 1} iteration {batch_idx + 1}/{len(loop.dataloader)}'
        else:
            where = f'iteration {runner.iter + 1}/{loop.max_iters}'
        runner.logger.warning(f'stopped by {self._preemption.signal_name} at {where}: saved {path}; run the same '
                              f'command with --resume to go on (exit code {EXIT_PREEMPTED})')
        if is_main_process():
            Preemption.mark_preempted()
        barrier()  # no process leaves (and gets killed by its launcher) before the checkpoint and marker are written
        self._release()
        raise Preempted(path)

    def after_train(self, runner) -> None:
        self._release()

    def _release(self) -> None:
        if self._preemption is not None:
            self._preemption.__exit__(None, None, None)
            self._preemption = None
