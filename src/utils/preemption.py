"""Stopping a run cleanly when its machine is taken away, and saying so with an exit code of its own.

SIGTERM (a Slurm requeue or time limit, a spot instance reclaimed, ``kill``) or SIGUSR1 (Slurm's
``--signal=USR1@T`` warning before the time limit) does not end the run at once: it sets a flag. The
training loop asks :meth:`Preemption.requested` after every optimizer step (classification) or training
iteration (detection and segmentation, :mod:`src.mm.preemption`); all processes of the run agree on the
answer (one all-reduce of a flag: a signal that reached one process stops them all at the same step), then
one checkpoint is written (atomically, with the RNG states and the position in the epoch) and the run exits
with :data:`EXIT_PREEMPTED` (75, sysexits' EX_TEMPFAIL: "try again"). The same command with ``--resume auto``
(``--resume`` for detection and segmentation; the Slurm launchers pass it) continues from that checkpoint
and ends bit for bit as a run never interrupted.

Under torchrun the exit code of the workers does not reach the shell (torchrun reports any non-zero code as
a failure), and ``srun --kill-on-bad-exit`` signals the other tasks when the first exits: the launchers pass
:data:`MARKER_ENV`, a file the main process writes ``preempted`` into before every process passes a last
barrier, and end with code 75 themselves when they find it (``tools/launch.sh``).
"""
import os
import signal
import sys
import threading
from typing import Dict, Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ['EXIT_PREEMPTED', 'MARKER_ENV', 'SIGNALS', 'Preempted', 'Preemption']

EXIT_PREEMPTED = 75
MARKER_ENV = 'CONVMLP_PREEMPTED_MARKER'
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised out of a training loop that stopped for a signal with its checkpoint saved, every process
    done (the detection and segmentation runs: :mod:`src.mm.preemption`); the command exits with
    :data:`EXIT_PREEMPTED`."""


class Preemption:
    """While active (``with Preemption() as p:``), SIGTERM and SIGUSR1 set :attr:`signal_name` instead of
    ending the process; :meth:`requested` tells every process whether any of them got one."""

    def __init__(self, signals: Sequence[signal.Signals] = SIGNALS, device: Optional[torch.device] = None):
        self.signals, self.device = tuple(signals), device or torch.device('cpu')
        self.signal_name: Optional[str] = None
        self._previous: Dict[signal.Signals, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name

    def __enter__(self) -> 'Preemption':
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        """Put the previous handlers back, unless a signal came: a process stopping for one ignores the next
        while it leaves (SIG_IGN, which holds through interpreter shutdown), so that every process of the
        run ends with :data:`EXIT_PREEMPTED` when a launcher passes the first one's exit on to the others as
        SIGTERM (``srun --kill-on-bad-exit``, torchrun)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler if self.signal_name is None else signal.SIG_IGN)
        self._previous.clear()

    def requested(self) -> bool:
        """True when this process or any other of the run got one of the signals (a collective call: every
        process must make it at the same point)."""
        flag = self.signal_name is not None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([int(flag)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self.signal_name is None:
                self.signal_name = 'another process'
        return flag

    @staticmethod
    def mark_preempted() -> None:
        """Tell the launcher (through the file named by :data:`MARKER_ENV`, if it set one) that the run
        stopped for a signal with its checkpoint saved."""
        path = os.environ.get(MARKER_ENV)
        if path:
            try:
                with open(path, 'w') as f:
                    f.write('preempted\n')
            except OSError as e:  # the launcher then goes by the exit code alone
                print(f'warning: cannot write the preemption marker {path}: {e}', file=sys.stderr, flush=True)
