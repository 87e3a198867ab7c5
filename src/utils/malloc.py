"""glibc malloc set up for tensor workloads on CPU: freed memory is kept for reuse.

By default glibc serves each allocation above its mmap threshold (128 KiB, rising to at most 32 MiB)
with a fresh ``mmap`` and gives it back to the kernel on ``free``. A training or inference step frees and
reallocates the same large activations every time, so each step page-faults (and the kernel zeroes) all of
them again: measured on ConvMLP-S at batch 16, 224 px, 2 threads, that is 10-20% of a step
(``tools/benchmark.py`` shows it as the ``system malloc`` rows). :func:`keep_freed_memory` turns mmap off
for the heap (``M_MMAP_MAX=0``) and raises the trim threshold to 2 GiB, so freed blocks stay in the
process and are reused, as PyTorch's caching allocator does on CUDA. The cost: resident memory stays at
the run's high-water mark instead of shrinking between steps.

The training, detection and segmentation entry points call it on CPU; set ``CONVMLP_MALLOC=system`` to
keep glibc's defaults. Without glibc (macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ['keep_freed_memory', 'ENV']

ENV = 'CONVMLP_MALLOC'
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2 ** 31 - 1  # the largest value mallopt's int takes: 2 GiB

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (see module docstring). True if it is in effect;
    False without glibc or when ``CONVMLP_MALLOC=system``. Safe to call repeatedly, from any thread."""
    global _applied
    choice = os.environ.get(ENV, 'keep')
    if choice not in ('keep', 'system'):
        raise ValueError(f"{ENV}={choice!r}: use 'keep' (reuse freed memory, the default) or 'system' "
                         f"(glibc's defaults)")
    if choice == 'system':
        return False
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
