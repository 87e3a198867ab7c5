"""Setting up a process of a run, one or many: the CPU allocator, and who the process is (rank, local rank,
world size) from the launcher's environment, joined into the process group (gloo on CPU, NCCL on CUDA).

``classification.py`` and the detection / segmentation runs start every process through
:func:`setup_process` and end it with :func:`teardown_process`. torchrun sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; without them the process is a run of one.
"""
import os
import sys
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.distributed as dist

from .errors import UsageError
from .malloc import keep_freed_memory

__all__ = ['Processes', 'processes_from_env', 'setup_process', 'teardown_process']


@dataclass(frozen=True)
class Processes:
    """This process's place in the run."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def processes_from_env() -> Processes:
    """The run as torchrun describes it (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); one process without."""
    try:
        return Processes(int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0)),
                         int(os.environ.get('WORLD_SIZE', 1)))
    except ValueError as e:
        raise UsageError(f'RANK, LOCAL_RANK and WORLD_SIZE must be integers ({e}): start the run with '
                         f'torchrun or the dist_*.sh launchers') from None


def setup_process(device: str = 'cpu', join: bool = True) -> Tuple[torch.device, Processes]:
    """Prepare this process of a run on ``device`` ('cpu', 'cuda' or 'cuda:N'): on CPU keep freed memory for
    reuse (:mod:`src.utils.malloc`); with ``join`` and more than one process, join the process group
    (gloo on CPU; on CUDA each process takes its local rank's GPU and NCCL). Returns this process's device
    and place. Raises UsageError for a bad ``CONVMLP_MALLOC`` or launcher environment."""
    procs = processes_from_env()
    cuda = device.startswith('cuda')
    if not cuda:
        try:
            keep_freed_memory()  # no page faults for every step's activations
        except ValueError as e:
            raise UsageError(str(e)) from None
        dev = torch.device('cpu')
    else:
        dev = torch.device(f'cuda:{procs.local_rank}' if procs.world_size > 1 else device)
        if join:
            torch.cuda.set_device(dev)
    if join and procs.world_size > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if cuda else 'gloo')
    return dev, procs


def teardown_process(barrier: bool = False) -> None:
    """Leave the process group (after a barrier if asked and no exception is on its way, so no rank exits
    while others still talk to it): a gloo group left to interpreter exit can abort a rank with
    'terminate called'."""
    if dist.is_initialized():
        if barrier and sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()
