"""Mixed precision by capability: low-precision autocast on the CPU only where the CPU computes it natively.

On a CPU with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm), oneDNN runs bf16 convolutions and
matrix multiplies at about twice the fp32 rate. Without them bf16 is emulated: on an AVX2-only CPU a bf16
matmul reaches 37 GFLOP/s against 166 in fp32, and a ConvMLP-S training step runs 10x slower than in
fp32. So ``--amp`` (and the README's inference recipe) asks :func:`amp_dtype`, which returns the low
precision dtype where it is native and ``None`` (plain fp32) where it is emulated, saying so once.
``CONVMLP_CPU_AMP=force`` uses the requested dtype anyway. On CUDA nothing changes: fp16 unless asked
otherwise. :func:`cpu_int8` says the same for int8 inference: whether the CPU has VNNI or AMX, the
instructions int8 kernels need to beat fp32 by much. :func:`cpu_name` is the CPU's model name.

Importable without timm or OpenMMLab.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from pathlib import Path
from typing import Callable, ContextManager, FrozenSet, Optional, Set

import torch

__all__ = ['FORCE_ENV', 'cpu_features', 'cpu_name', 'cpu_native', 'cpu_isa', 'cpu_int8', 'amp_dtype', 'autocast']

FORCE_ENV = 'CONVMLP_CPU_AMP'
# features (torch.cpu.get_capabilities() keys, which are also /proc/cpuinfo's flag names on Linux) that
# give the CPU native arithmetic in the dtype: x86, then Arm
NATIVE_FEATURES = {torch.bfloat16: ('avx512_bf16', 'amx_bf16', 'bf16', 'sve_bf16'),
                   torch.float16: ('avx512_fp16', 'amx_fp16', 'fp16_arith', 'asimdhp')}
# int8 dot-product instructions, the ones int8 inference kernels (ONNX Runtime, oneDNN, OpenVINO) are fast with:
# AMX tiles, then VNNI (x86); SDOT/UDOT and I8MM (Arm). Without them an int8 product takes three instructions
# (AVX2: vpmaddubsw, vpmaddwd, vpaddd) where VNNI takes one.
INT8_FEATURES = {'AMX': ('amx_int8',), 'VNNI': ('avx512_vnni', 'avx_vnni'),
                 'dot product': ('asimddp', 'dotprod', 'i8mm', 'sve_i8mm')}
SHORT = {torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.float32: 'fp32'}
_warned: Set[str] = set()


def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The value of the first line of ``/proc/cpuinfo`` whose key is one of ``keys``; None without such a
    line (or without the file: not Linux)."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(':')
        if key.strip() in keys:
            return value.strip()
    return None


@functools.lru_cache(None)
def cpu_features() -> FrozenSet[str]:
    """The instruction-set features this CPU has: from torch's cpuinfo query
    (``torch.cpu.get_capabilities``), or the flags of ``/proc/cpuinfo`` on a torch without it."""
    get = getattr(torch.cpu, 'get_capabilities', None)
    if get is not None:
        return frozenset(k for k, v in get().items() if v is True)
    return frozenset((_cpuinfo(('flags', 'Features')) or '').split())  # x86, Arm


def cpu_name() -> str:
    """The CPU's model name for speed figures: ``/proc/cpuinfo``'s ``model name``, else
    ``platform.processor()`` or ``platform.machine()``."""
    name = _cpuinfo(('model name',))
    return name if name is not None else platform.processor() or platform.machine()


def cpu_native(dtype: torch.dtype = torch.bfloat16) -> bool:
    """True if this CPU computes ``dtype`` products natively (oneDNN present and one of
    :data:`NATIVE_FEATURES`); False where torch emulates it, many times slower than fp32."""
    if dtype == torch.float32:
        return True
    return torch.backends.mkldnn.is_available() and any(f in cpu_features() for f in NATIVE_FEATURES.get(dtype, ()))


def cpu_isa() -> str:
    """One line for speed figures: torch's kernel level and whether bf16 is native, e.g.
    ``'AVX512, bf16 native (avx512_bf16 amx_bf16)'`` or ``'AVX2, bf16 emulated'``."""
    has = [f for f in NATIVE_FEATURES[torch.bfloat16] if f in cpu_features()]
    bf16 = f"bf16 native ({' '.join(has)})" if cpu_native(torch.bfloat16) else 'bf16 emulated'
    return f'{torch.backends.cpu.get_cpu_capability()}, {bf16}'


def cpu_int8() -> str:
    """One line for int8 speed figures: which int8 dot-product instructions this CPU has, e.g.
    ``'int8 VNNI (avx512_vnni avx_vnni)'``, ``'int8 AMX+VNNI (amx_int8 avx512_vnni)'`` or ``'int8 without
    VNNI/AMX'`` (an AVX2-only x86 CPU)."""
    found = {kind: [f for f in features if f in cpu_features()] for kind, features in INT8_FEATURES.items()}
    kinds = [kind for kind, have in found.items() if have]
    if not kinds:
        return 'int8 without VNNI/AMX'
    return f"int8 {'+'.join(kinds)} ({' '.join(f for kind in kinds for f in found[kind])})"


def _forced() -> bool:
    value = os.environ.get(FORCE_ENV, 'auto')
    if value not in ('auto', 'force'):
        raise ValueError(f"{FORCE_ENV} must be 'auto' or 'force', got {value!r}: unset it, or set it to 'force' "
                         f'to autocast on a CPU without native low-precision arithmetic')
    return value == 'force'


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def amp_dtype(device_type: str, requested: Optional[torch.dtype] = None,
              warn: Callable[[str], None] = _stderr) -> Optional[torch.dtype]:
    """The dtype to autocast to for mixed precision on ``device_type``, or None for fp32.

    CUDA: ``requested`` or fp16. CPU: ``requested`` or bf16 if the CPU computes it natively (or
    ``CONVMLP_CPU_AMP=force``); otherwise None, and ``warn`` gets one line saying so (once per process,
    and only on the first process of a node). Raises ValueError for a bad ``CONVMLP_CPU_AMP``."""
    if device_type != 'cpu':
        return requested or torch.float16
    dtype = requested or torch.bfloat16
    if _forced() or cpu_native(dtype):
        return dtype
    name = SHORT.get(dtype, str(dtype))
    if name not in _warned and int(os.environ.get('LOCAL_RANK', 0)) == 0:
        _warned.add(name)
        warn(f'{name} is emulated on this CPU ({cpu_isa()}), many times slower than fp32: using fp32 instead '
             f'of {name} autocast; set {FORCE_ENV}=force to use {name} anyway')
    return None


def autocast(device_type: str = 'cpu', requested: Optional[torch.dtype] = None) -> ContextManager:
    """``torch.autocast`` to :func:`amp_dtype`'s choice, or a no-op context where that is fp32."""
    dtype = amp_dtype(device_type, requested)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
