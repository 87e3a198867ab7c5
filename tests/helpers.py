"""Helpers shared by the tests: the tools as modules, a tiny ConvMLP, models whose norms are not at their initial
values, a free port for a rendezvous, waiting for a running process's log to show something."""
import importlib.util
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from conftest import ROOT
from src.convmlp import ConvMLP


def load_tool(name: str):
    """tools/<name>.py as a module, so a test calls its main(argv) in this process."""
    spec = importlib.util.spec_from_file_location(f'tool_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_convmlp(seed: int = 0, **kwargs) -> ConvMLP:
    """ConvMLP with ConvMLP-S's strides and layers, 1 block per stage, narrow: a fraction of a second per pass."""
    torch.manual_seed(seed)
    kwargs = dict(dict(num_classes=3, n_conv_blocks=1), **kwargs)
    return ConvMLP(blocks=(1, 1, 1), dims=(32, 64, 128), mlp_ratios=(1, 1, 1), channels=16,
                   drop_path_rate=0., **kwargs).eval()


def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm running statistics and an affine, and every LayerNorm an affine, far from the
    initial values (weight 1, bias 0, mean 0, variance 1), as a trained model has: at those values a norm
    applied twice, or a BatchNorm folded wrongly, goes unseen."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * .2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + .5)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 1.5 + .5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * .5)
    return model


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for_log(log: Path, done: Callable[[str], object], proc: Optional[subprocess.Popen] = None,
                 timeout: Optional[float] = None, poll: float = 0.01, what: str = 'what was waited for',
                 must_run: bool = False) -> Optional[str]:
    """Read the file ``log`` ('' while it does not exist) every ``poll`` seconds until ``done(text)`` is true,
    and return that text. If ``proc`` (when given) ends first: None (what that means is the caller's to say),
    or with ``must_run`` an AssertionError ``ended before WHAT: <the log's last 3000 characters>``. After
    ``timeout`` seconds (None: no limit) an AssertionError ``no WHAT in LOG after TIMEOUT s``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        text = log.read_text(errors='replace') if log.is_file() else ''
        if done(text):
            return text
        if proc is not None and proc.poll() is not None:
            assert not must_run, f'ended before {what}: {text[-3000:]}'
            return None
        time.sleep(poll)
    raise AssertionError(f'no {what} in {log} after {timeout} s')
