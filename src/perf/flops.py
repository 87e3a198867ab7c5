"""Parameters and multiply-accumulates (MACs) as fvcore counts them, without fvcore.

fvcore (``FlopCountAnalysis``, the counter behind the paper's table) counts one fused multiply-add as
one "flop" and, by default, these operators (``n`` = element count):

    conv, linear / matmul / bmm     multiply-adds of the product (bias adds not counted)
    batch norm                      eval: 2n (n without affine); training: 5n (4n without affine)
    layer / group norm              5n (4n without affine)
    upsample nearest / bilinear     n_out / 4 n_out
    adaptive avg pool               n_in (when it is not a plain global mean, see below)
    grid sample                     4 n_out

Everything else (activations, additions, pooling, means) is free. :func:`count_macs` reproduces this
with a dispatch mode that applies torch's FLOP formulas (``torch.utils.flop_counter``; they count a
multiply-add as 2 and are halved here) and the norm and resampling rules above to every ATen op.
Counting happens at the ATen level, so a global ``adaptive_avg_pool2d`` to 1x1, which ATen lowers to
``mean``, is free here while fvcore charges ``n_in`` for it; ConvMLP itself pools with ``mean``.

ConvMLP at 224x224: S 2.399G, M 3.948G, L 9.904G MACs, as the paper's 2.4G / 3.9G / 9.9G.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torch.utils.module_tracker import ModuleTracker

__all__ = ['MacCount', 'count_macs', 'count_params', 'MAC_RULES']

aten = torch.ops.aten


def _halved(flop_rule: Callable) -> Callable:
    """torch's formula counts a multiply-add as two FLOPs; fvcore counts it as one MAC."""
    return lambda *args, out_val=None, **kwargs: flop_rule(*args, out_val=out_val, **kwargs) // 2


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _norm(x: torch.Tensor, weight, statistics: bool = True) -> int:
    """fvcore's norm rule: 5n with affine, 4n without; 2n / n for eval-mode batch norm (no statistics)."""
    if not statistics:
        return x.numel() * (2 if weight is not None else 1)
    return x.numel() * (5 if weight is not None else 4)


def _batch_norm(x, weight, bias, running_mean, running_var, training, *args, out_val=None, **kwargs) -> int:
    return _norm(x, weight, training)


def _batch_norm_eval(x, weight, *args, out_val=None, **kwargs) -> int:
    return _norm(x, weight, statistics=False)


def _batch_norm_train(x, weight, *args, out_val=None, **kwargs) -> int:  # also group and instance norm
    return _norm(x, weight)


def _layer_norm(x, normalized_shape, weight=None, *args, out_val=None, **kwargs) -> int:
    return _norm(x, weight)


def _per_output(scale: int) -> Callable:
    return lambda *args, out_val=None, **kwargs: scale * _first(out_val).numel()


def _per_input(x, *args, out_val=None, **kwargs) -> int:
    return x.numel()


# ATen op packet -> rule(*op args, out_val=op output, **op kwargs) -> MACs.
MAC_RULES: Dict = {
    **{op: _halved(rule) for op, rule in flop_registry.items()},  # matmul, conv, attention (fwd and bwd)
    **{op: _batch_norm for op in (aten.native_batch_norm, aten.cudnn_batch_norm)},
    aten._native_batch_norm_legit_no_training: _batch_norm_eval,
    aten._native_batch_norm_legit: _batch_norm_train,
    aten.native_layer_norm: _layer_norm,
    aten.native_group_norm: _batch_norm_train,
    aten.upsample_nearest2d: _per_output(1),
    aten.upsample_bilinear2d: _per_output(4),
    aten.grid_sampler_2d: _per_output(4),
    aten._adaptive_avg_pool2d: _per_input,
}


@dataclass
class MacCount:
    """Result of :func:`count_macs`: ``total`` MACs, and the same split by ATen op and by module name
    (``''`` is the whole model; a module's count includes its children's)."""
    total: int
    by_operator: Dict[str, int] = field(default_factory=dict)
    by_module: Dict[str, int] = field(default_factory=dict)


class _MacCounter(TorchDispatchMode):
    """Applies :data:`MAC_RULES` to every ATen op run under it; counts per op, for every module the op
    runs in (``'Global'`` is the whole run)."""

    def __init__(self):
        super().__init__()
        self.counts: Dict[str, Counter] = defaultdict(Counter)
        self.tracker = ModuleTracker()

    def __enter__(self):
        self.tracker.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.tracker.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = MAC_RULES.get(func._overloadpacket)
        if rule is not None:
            macs = rule(*args, out_val=out, **kwargs)
            for name in set(self.tracker.parents):
                self.counts[name][str(func._overloadpacket)] += macs
        return out


def count_macs(model: nn.Module, inputs: Union[torch.Tensor, Tuple]) -> MacCount:
    """MACs of one forward pass of ``model`` on ``inputs`` (a tensor or a tuple of positional args),
    in eval mode and without gradients, counted as fvcore does (see the module docstring).

    The model's train/eval mode is restored afterwards."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    was_training = model.training
    counter = _MacCounter()
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        model.train(was_training)
    by_operator = dict(counter.counts.get('Global', {}))
    # the tracker names modules '<root class>.<path>'; key them by path, as named_modules() does
    root = type(model).__name__
    by_module = {('' if name == root else name[len(root) + 1:]): sum(ops.values())
                 for name, ops in counter.counts.items() if name != 'Global'}
    return MacCount(total=sum(by_operator.values()), by_operator=by_operator, by_module=by_module)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters once)."""
    return sum(p.numel() for p in model.parameters())
