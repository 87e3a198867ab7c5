"""Setting up a process of a run, one or many: the CPU allocator, and who the process is (rank, local rank,
world size) from the launcher's environment, joined into the process group (gloo on CPU, NCCL on CUDA).

``classification.py`` and the detection / segmentation runs start every process through
:func:`setup_process` and end it with :func:`teardown_process`. torchrun sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; without them the process is a run of one.
"""
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from .errors import UsageError
from .malloc import keep_freed_memory

__all__ = ['Processes', 'env_rank', 'processes_from_env', 'setup_process', 'teardown_process']


@dataclass(frozen=True)
class Processes:
    """This process's place in the run."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


LAUNCHERS = ('none', 'pytorch', 'slurm')


def processes_from_env(launcher: Optional[str] = None) -> Processes:
    """This process's place in the run, as its launcher describes it:

    * ``'pytorch'`` (torchrun, the ``dist_*.sh`` launchers): ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``;
    * ``'slurm'`` (one ``srun`` task per process, the ``slurm_*.sh`` launchers): ``SLURM_PROCID``,
      ``SLURM_LOCALID``, ``SLURM_NTASKS``, and the rendezvous on the job's first node
      (:func:`slurm_environment`), written into the environment as torchrun would;
    * ``'none'``: one process; ``None``: torchrun's variables where they are set, else one process.

    Raises UsageError (one line) for an environment that does not describe a run."""
    if launcher == 'slurm':
        os.environ.update(slurm_environment(os.environ))
    elif launcher == 'pytorch' and 'RANK' not in os.environ:
        raise UsageError('--launcher pytorch expects to be started by torchrun (RANK is not set): use the dist_*.sh '
                         'launchers or torchrun')
    if launcher == 'none':
        return Processes()
    try:
        procs = Processes(int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0)),
                          int(os.environ.get('WORLD_SIZE', 1)))
    except ValueError as e:
        raise UsageError(f'RANK, LOCAL_RANK and WORLD_SIZE must be integers ({e}): start the run with '
                         f'torchrun or the dist_*.sh launchers') from None
    if not 0 <= procs.rank < procs.world_size:
        raise UsageError(f'RANK={procs.rank} is outside 0..WORLD_SIZE-1 ({procs.world_size - 1})')
    return procs


def env_rank() -> int:
    """This process's rank as its launcher's environment gives it, before (or without) the process group:
    ``RANK`` (torchrun), else ``SLURM_PROCID`` (an srun task), else 0; 0 for a value that is not a number.
    For what only one process should print (warnings, the error line)."""
    for name in ('RANK', 'SLURM_PROCID'):
        value = os.environ.get(name, '').strip()
        if value:
            return int(value) if value.isdigit() else 0
    return 0


def _slurm_int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, '')
    if not value.strip():
        raise UsageError(f'bad Slurm environment: {name} is not set: start every process with srun '
                         f'(or the slurm_*.sh launchers)')
    try:
        return int(value)
    except ValueError:
        raise UsageError(f'bad Slurm environment: {name}={value!r} is not a whole number') from None


def first_node(nodelist: str) -> str:
    """The first host of a Slurm node list: ``'gpu[03-05,9],cpu1'`` -> ``'gpu03'``."""
    m = re.match(r'([^,\[]+)(?:\[([^\]]+)\])?', nodelist.strip())
    if not m:
        raise UsageError(f'bad Slurm environment: cannot read the node list {nodelist!r}')
    prefix, ranges = m.group(1), m.group(2)
    return prefix if ranges is None else prefix + ranges.split(',')[0].split('-')[0]


def _node_address(node: str) -> str:
    """The address Slurm knows ``node`` by (its NodeAddr; the name itself where scontrol is not at hand)."""
    if shutil.which('scontrol'):
        out = subprocess.run(['scontrol', 'show', 'node', '-o', node], capture_output=True, text=True)
        m = re.search(r'\bNodeAddr=(\S+)', out.stdout)
        if out.returncode == 0 and m:
            return m.group(1)
    return node


def slurm_environment(env: Mapping[str, str]) -> Dict[str, str]:
    """torchrun's variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) for a
    process started by ``srun``, one task per process. ``MASTER_ADDR`` / ``MASTER_PORT`` exported by the
    batch script win; else the first node of the step and a port drawn from the job id. Raises UsageError
    when the process is not a task of a job step (the batch script itself has ``SLURM_PROCID`` too, but no
    ``SLURM_STEP_ID``) or the task counts disagree."""
    if 'SLURM_JOB_ID' not in env:
        raise UsageError('bad Slurm environment: not inside a Slurm job (SLURM_JOB_ID is not set): submit with '
                         'sbatch or start with srun (the slurm_*.sh launchers do both)')
    rank = _slurm_int(env, 'SLURM_PROCID')
    if 'SLURM_STEP_ID' not in env and 'SLURM_STEPID' not in env:
        raise UsageError('bad Slurm environment: running in the batch script, not in a job step: start the '
                         'training processes with srun')
    ntasks = _slurm_int(env, 'SLURM_NTASKS')
    step = env.get('SLURM_STEP_NUM_TASKS')
    if step and step != str(ntasks):
        raise UsageError(f'bad Slurm environment: task count mismatch: SLURM_NTASKS={ntasks} but '
                         f'SLURM_STEP_NUM_TASKS={step}')
    if env.get('WORLD_SIZE') and env['WORLD_SIZE'] != str(ntasks):
        raise UsageError(f"bad Slurm environment: task count mismatch: WORLD_SIZE={env['WORLD_SIZE']} but "
                         f'SLURM_NTASKS={ntasks} (torchrun inside srun? start one srun task per process instead)')
    if not 0 <= rank < ntasks:
        raise UsageError(f'bad Slurm environment: SLURM_PROCID={rank} is outside 0..{ntasks - 1} '
                         f'(SLURM_NTASKS={ntasks})')
    local = _slurm_int(env, 'SLURM_LOCALID')
    nodes = env.get('SLURM_STEP_NODELIST') or env.get('SLURM_JOB_NODELIST') or env.get('SLURM_NODELIST')
    if not env.get('MASTER_ADDR') and not nodes:
        raise UsageError('bad Slurm environment: SLURM_JOB_NODELIST is not set')
    addr = env.get('MASTER_ADDR') or _node_address(first_node(nodes))
    port = env.get('MASTER_PORT') or str(20000 + int(env['SLURM_JOB_ID']) % 40000)
    return dict(RANK=str(rank), LOCAL_RANK=str(local), WORLD_SIZE=str(ntasks), MASTER_ADDR=addr, MASTER_PORT=port)


def setup_process(device: str = 'cpu', join: bool = True,
                  launcher: Optional[str] = None) -> Tuple[torch.device, Processes]:
    """Prepare this process of a run on ``device`` ('cpu', 'cuda' or 'cuda:N'): on CPU keep freed memory for
    reuse (:mod:`src.utils.malloc`); with ``join`` and more than one process, join the process group
    (gloo on CPU; on CUDA each process takes its local rank's GPU and NCCL). Returns this process's device
    and place. Raises UsageError for a bad ``CONVMLP_MALLOC`` or launcher environment."""
    procs = processes_from_env(launcher)
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
