"""The random number generators' state of this process (python, numpy, torch, CUDA), saved into and put
back from checkpoints so that a resumed run draws what the uninterrupted run would have drawn. The state
is tensors and plain values only: a checkpoint holding it loads with ``weights_only=True``."""
import random

import numpy as np
import torch

__all__ = ['rng_state', 'set_rng_state']


def rng_state() -> dict:
    """This process's python / numpy / torch (and CUDA) RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    state = dict(python=random.getstate(),
                 numpy=(np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what :func:`rng_state` returned (CUDA's only where there is CUDA)."""
    random.setstate((state['python'][0], tuple(state['python'][1]), state['python'][2]))
    name, keys, *rest = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
