"""Inference-time folding of BatchNorm into the convolution before it.

An eval-mode ``BatchNorm2d`` after a ``Conv2d`` is an affine map per output channel, so it folds into the
conv's weight and bias: ``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``.
The folded BN becomes ``nn.Identity`` in place, so Sequential indices (and every other module name) stay
as in the checkpoint; the fused model's state dict differs only in lacking the BN entries and having a
bias on the folded convs. Load weights first, then fuse.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ['fold_batchnorm', 'fuse_model']


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` with ``bn`` in eval mode (running statistics)."""
    if conv.out_channels != bn.num_features or bn.running_mean is None:
        raise ValueError(f'cannot fold {bn} (needs running statistics, {conv.out_channels} channels) '
                         f'into {conv}')
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.affine:
        scale = scale * bn.weight
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.affine else 0.
    fused.bias.copy_((bias - bn.running_mean) * scale + shift)
    return fused


def fuse_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Eval-mode copy of ``model`` (or ``model`` itself if ``inplace``) with every BatchNorm2d that directly
    follows a Conv2d inside an ``nn.Sequential`` folded into that conv. Outputs match the unfused model in
    eval mode up to float rounding (1e-4 on ConvMLP logits in fp32)."""
    fused = model if inplace else copy.deepcopy(model)
    fused.eval()
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fold_batchnorm(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return fused
