"""bf16 mixed-precision training on CPU for mmengine's Runner (``detection/train.py --amp``,
``segmentation/train.py --amp``).

mmengine's ``AmpOptimWrapper`` refuses to start without a GPU (it asserts CUDA/NPU/MLU/MUSA and builds a
CUDA GradScaler), and bf16 needs no loss scaling. :class:`CPUAutocastOptimWrapper` is mmengine's plain
``OptimWrapper`` whose forward (``optim_context``, entered by ``BaseModel.train_step``) runs under
``torch.autocast('cpu', dtype)``. Importing this module registers it in mmengine's ``OPTIM_WRAPPERS``.
Testing needs nothing of this: mmengine's test loop autocasts to bf16 on CPU with ``test_cfg.fp16=True``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

__all__ = ['CPUAutocastOptimWrapper']


@OPTIM_WRAPPERS.register_module(force=True)
class CPUAutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` with the forward under CPU autocast to ``dtype`` ('bfloat16' or 'float16')."""

    def __init__(self, dtype: str = 'bfloat16', **kwargs):
        if dtype not in ('bfloat16', 'float16'):
            raise ValueError(f"CPUAutocastOptimWrapper dtype must be 'bfloat16' or 'float16', got {dtype!r}")
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype)

    @contextlib.contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
