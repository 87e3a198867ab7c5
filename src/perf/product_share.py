"""The share of an inference step's time spent in matrix products (convolutions, linears, their int8 forms),
read from each runtime's own profiler: how fast a path would go if everything else (normalization, GELU,
residual adds, quantize / dequantize, layout changes) took no time.

For an int8 path it bounds what any change outside the products can give: with ``s`` its share and ``t`` its
step, ``s * t`` is the time its products take; the faster fp32 step over that is the speed-up int8 would
reach with all else free (``src.perf.benchmark.int8_speedups``' ``ceiling``). The shares are taken over a few
profiled steps after the timed ones; the profiler adds its own cost to each op, so the share is kept, not
the profiled times, and a share is an estimate (between runs it moved by up to 0.08 here).

* ``torch_products_share``: PyTorch's profiler over eager or compiled steps (``torch.compile`` runs its fused
  element-wise kernels inside its graph call; oneDNN's int8 convolutions and linears, GELU fused in as their
  post-op, are ops of their own);
* ``onnx_products_share``: ONNX Runtime's session profile, per node kernel time.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Dict

__all__ = ['TORCH_PRODUCT_OPS', 'ONNX_PRODUCT_OPS', 'torch_products_share', 'onnx_products_share']

# the profiler's names of the ops that are matrix products, on the CPU (eager, channels-last: convs and 1x1 convs
# through oneDNN, the head through MKL; compiled: oneDNN's prepacked kernels; PT2E int8: oneDNN's quantized ones)
TORCH_PRODUCT_OPS = frozenset([
    'aten::mkldnn_convolution', 'aten::addmm', 'aten::mm', 'aten::bmm', 'aten::thnn_conv2d',
    'aten::_slow_conv2d_forward', 'aten::_mkl_linear', 'mkldnn::_convolution_pointwise',
    'mkldnn::_linear_pointwise', 'mkl::_mkl_linear', 'onednn::qconv_pointwise', 'onednn::qconv2d_pointwise',
    'onednn::qlinear_pointwise'])
# ONNX Runtime's CPU kernels that are matrix products, fp32 and int8 (after its graph fusions)
ONNX_PRODUCT_OPS = frozenset(['Conv', 'FusedConv', 'NhwcFusedConv', 'MatMul', 'FusedMatMul', 'Gemm', 'FusedGemm',
                              'QLinearConv', 'QLinearMatMul', 'QGemm', 'ConvInteger', 'MatMulInteger',
                              'MatMulIntegerToFloat', 'DynamicQuantizeMatMul'])


def _share(by_op: Dict[str, float], products: frozenset) -> float:
    total = sum(by_op.values())
    if total <= 0:
        raise ValueError('the profile recorded no time')
    return sum(t for op, t in by_op.items() if op in products) / total


def torch_products_share(step: Callable[[], object], steps: int = 2) -> float:
    """Share (0-1) of ``steps`` calls of ``step`` spent in :data:`TORCH_PRODUCT_OPS`, by the self time the
    profiler gives each op on the calling thread (intra-op threads work inside their op's call)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    by_op: Dict[str, float] = {}
    for event in prof.key_averages():
        by_op[event.key] = by_op.get(event.key, 0.) + event.self_cpu_time_total
    return _share(by_op, TORCH_PRODUCT_OPS)


def onnx_products_share(onnx_model: bytes, feed: Dict[str, object], threads: int, steps: int = 2) -> float:
    """Share (0-1) of ``steps`` runs of ``onnx_model`` on ``feed`` spent in the kernels of
    :data:`ONNX_PRODUCT_OPS`: a session of its own (:func:`src.deploy.export.onnx_session` with ``threads``,
    profiling on), after one untimed run."""
    from ..deploy.export import onnx_session
    with tempfile.TemporaryDirectory() as tmp:
        session = onnx_session(onnx_model, threads, profile_prefix=os.path.join(tmp, 'profile'))
        for _ in range(1 + steps):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs = sorted((e for e in events if e.get('cat') == 'Session' and e['name'] == 'model_run'), key=lambda e: e['ts'])
    warmed = runs[0]['ts'] + runs[0]['dur']  # the first run's kernels are not counted
    by_op: Dict[str, float] = {}
    for event in events:
        if event.get('cat') == 'Node' and event['name'].endswith('_kernel_time') and event['ts'] >= warmed:
            op = event['args']['op_name']
            by_op[op] = by_op.get(op, 0.) + event['dur']
    return _share(by_op, ONNX_PRODUCT_OPS)
