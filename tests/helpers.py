"""Helpers shared by the tests: the tools as modules, models whose norms are not at their initial values, a free
port for a rendezvous."""
import importlib.util
import socket

import torch
from torch import nn

from conftest import ROOT


def load_tool(name: str):
    """tools/<name>.py as a module, so a test calls its main(argv) in this process."""
    spec = importlib.util.spec_from_file_location(f'tool_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
