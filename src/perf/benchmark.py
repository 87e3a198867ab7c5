"""Measure ConvMLP's execution paths: images/s, peak memory and achieved FLOP/s (behind tools/benchmark.py).

Every configuration runs in a fresh Python process (``python -m src.perf.benchmark`` reads one JSON config on
stdin, prints one JSON result), so compile caches, allocator state and the memory high-water mark of one
configuration never leak into the next.

Paths:
  * ``baseline``: the release's straightforward forward (:class:`ReleaseForward`): contiguous NCHW input and
    activations, a ``permute(...).contiguous()`` copy before and after every depthwise and downsampling conv,
    BatchNorm unfused, channel MLPs through ``nn.Linear``, fp32 only, torch's default AdamW, glibc's default
    malloc.
  * ``fast``: our model in channels-last (no layout copies; eager on CPU the channel MLPs as 1x1 convs),
    optionally with BatchNorm folded (``fused``, inference only), ``torch.compile`` (inference with inductor
    freezing), autocast bf16/fp16 and gradient checkpointing (training only); the fused AdamW kernel; malloc
    keeping freed memory (:mod:`src.utils.malloc`).
  * ``floor``: the eager fast path's step with each matrix product (convolution forward and backward, mm)
    timed as it runs (:class:`ProductTimer`); the row reports their sum only: how fast the step would go on
    this machine if everything that is not a matrix product took no time.
  * ``onnx`` (CPU inference): the model exported to ONNX by :func:`src.deploy.export.onnx_bytes` (BatchNorm
    folded first with ``fused``), run by ONNX Runtime's CPU provider on the same batch; the row also holds its
    parity with the eager fp32 model on that batch (max abs difference of the logits, top-1 agreement).
    ``int8``: the export quantized as ``tools/quantize.py`` does (:mod:`src.deploy.quantize`, the convolutions
    of ``keep_fp32`` left in fp32), calibrated on the timed batch itself: random weights and inputs, so its
    parity says nothing about accuracy (``tools/quantize.py`` measures that on real data); the speed is real.
  * ``pt2e`` (CPU, int8 inference): the model quantized by PT2E as ``tools/quantize.py --backend pt2e`` does,
    calibrated on the timed batch as the onnx path's int8, compiled by inductor (:mod:`src.deploy.pt2e`;
    ``max_autotune``: with inductor's C++ int8 GEMMs where they time faster than oneDNN's).
  ``malloc`` can be set either way on the first two paths, to show what the allocator alone contributes.

Every row also records the machine's load average (1 min) when its timing ends: on a shared machine, read
ratios only between rows of one run, and with their load. And ``cpu_images_per_s``: images per second of this
process's CPU time (all its threads; best step): with one thread, what the step costs whatever else runs on
the machine (with more, idle threads spinning count too). Inference rows of the fast, onnx and pt2e paths on the
CPU also record ``products_share``, the share of a step spent in matrix products (:mod:`.product_share`, from a
few profiled steps after the timed ones), from which :func:`int8_speedups` bounds each int8 row.

Peak memory, two measures of what a step adds on top of weights, inputs and optimizer state:
  * ``tensor_mib``: the most bytes of tensors allocated during one step and alive at once. On CPU from the
    profiler's allocation events (one extra step, after the timed ones); on CUDA
    ``torch.cuda.max_memory_allocated`` over the timed steps minus what was allocated before.
  * ``rss_mib`` (CPU): resident set size. The child records VmRSS once model, inputs and optimizer exist,
    runs the warm-up (compilation included), resets the kernel's high-water mark (``/proc/self/clear_refs``,
    value 5), runs the timed steps and reports ``VmHWM - VmRSS_before``: tensors plus what the allocator
    holds on to, oneDNN scratch and compiled code.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..convmlp import ConvDownsample, ConvMLP, convmlp_l, convmlp_m, convmlp_s
from ..utils.malloc import keep_freed_memory
from ..utils.shutdown import exit_process
from .product_share import onnx_products_share, torch_products_share

__all__ = ['Config', 'INT8_BACKENDS', 'ReleaseForward', 'run_config', 'measure', 'peak_tensor_bytes',
           'matmul_peak_gflops', 'step_flops', 'bf16_agreement', 'ProductTimer', 'int8_speedups']

BUILDERS = {'convmlp_s': convmlp_s, 'convmlp_m': convmlp_m, 'convmlp_l': convmlp_l}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
INT8 = 'int8'  # the onnx path's quantized dtype (src.deploy.quantize), not an autocast dtype
# the int8 backends of the benchmark's rows: their Config settings
INT8_BACKENDS = {'onnxruntime': dict(path='onnx'), 'pt2e': dict(path='pt2e'),
                 'pt2e-max-autotune': dict(path='pt2e', max_autotune=True)}
ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured configuration."""
    model: str = 'convmlp_s'
    mode: str = 'infer'            # 'infer' | 'train' (forward, backward, AdamW step)
    path: str = 'fast'             # 'baseline' | 'fast' | 'floor' (the fast path's products alone) | 'onnx' | 'pt2e'
    dtype: str = 'fp32'            # 'fp32' | 'bf16' | 'fp16' (autocast; fp16 on CUDA only) | 'int8' (onnx, pt2e)
    keep_fp32: str = ''            # int8: the convolutions left in fp32 (src.deploy.quantize.KEEP_FP32_ORDER)
    max_autotune: bool = False     # pt2e: compiled with inductor's max-autotune (src.deploy.pt2e.compile_int8)
    compiled: bool = False
    fused: bool = False            # BatchNorm folded into convs (inference only)
    checkpointing: bool = False    # gradient checkpointing (training only)
    batch: int = 16
    res: int = 224
    device: str = 'cpu'
    malloc: str = ''               # 'keep' (src.utils.malloc) | 'system'; '' = the path's own: fast keep, baseline system

    def __post_init__(self):
        if not self.malloc:
            object.__setattr__(self, 'malloc', 'system' if self.path == 'baseline' else 'keep')
        if self.malloc not in ('keep', 'system'):
            raise ValueError(f"malloc must be 'keep' or 'system'; got {self.malloc!r}")
        if self.model not in BUILDERS:
            raise ValueError(f'unknown model {self.model!r}: choose from {sorted(BUILDERS)}')
        if self.mode not in ('infer', 'train') or self.path not in ('baseline', 'fast', 'floor', 'onnx', 'pt2e'):
            raise ValueError(f"mode must be 'infer' or 'train' and path 'baseline', 'fast', 'floor', 'onnx' or "
                             f"'pt2e'; got {self}")
        if self.dtype not in DTYPES and not (self.dtype == INT8 and self.path in ('onnx', 'pt2e')):
            raise ValueError(f'unknown dtype {self.dtype!r}: choose from {sorted(DTYPES)} (int8: the onnx and pt2e '
                             f'paths only)')
        if self.dtype == INT8 and not self.keep_fp32:
            object.__setattr__(self, 'keep_fp32', 'first_conv')
        if (self.dtype == INT8) != bool(self.keep_fp32):
            raise ValueError('keep_fp32 is for int8 rows only')
        if self.path == 'baseline' and (self.dtype != 'fp32' or self.compiled or self.fused or self.checkpointing):
            raise ValueError('the baseline is the release forward: fp32, eager, unfused, no checkpointing')
        if self.path == 'floor' and (self.compiled or self.checkpointing):
            raise ValueError("the floor times the eager fast path's products: no compile, no checkpointing")
        if self.path == 'onnx' and (self.mode != 'infer' or self.dtype not in ('fp32', INT8) or self.compiled
                                    or self.device != 'cpu'):
            raise ValueError('the onnx path is fp32 or int8 inference under ONNX Runtime on the CPU, not compiled')
        if self.path == 'pt2e' and (self.mode != 'infer' or self.dtype != INT8 or self.device != 'cpu'):
            raise ValueError('the pt2e path is int8 inference on the CPU (PT2E, compiled by inductor)')
        if self.max_autotune and self.path != 'pt2e':
            raise ValueError('max_autotune is a setting of the pt2e path')
        if self.fused and self.mode == 'train':
            raise ValueError('fused BatchNorm is for inference: training needs batch statistics')
        if self.checkpointing and self.mode == 'infer':
            raise ValueError('gradient checkpointing only applies to training')

    @property
    def label(self) -> str:
        if self.path == 'baseline':
            return 'baseline (release)' + ' + keep malloc' * (self.malloc == 'keep')
        if self.path == 'floor':
            return f"{self.dtype}{' fused' * self.fused} matrix products alone (floor)"
        if self.path == 'onnx':
            return f"{self.dtype} onnxruntime{' fused' * self.fused}" + (f' ({self.keep_fp32} in fp32)' * bool(self.keep_fp32))
        if self.path == 'pt2e':
            return (f"{self.dtype} pt2e compiled{' max-autotune' * self.max_autotune}{' fused' * self.fused} "
                    f"({self.keep_fp32} in fp32)")
        parts = [self.dtype, 'compiled' if self.compiled else 'eager']
        parts += ['fused'] * self.fused + ['ckpt'] * self.checkpointing + ['system malloc'] * (self.malloc == 'system')
        return ' '.join(parts)

    @property
    def is_reference(self) -> bool:
        """The row every ratio is taken against: the release as it runs (baseline, system malloc)."""
        return self.path == 'baseline' and self.malloc == 'system'


class ReleaseForward(nn.Module):
    """The release's straightforward forward over a :class:`ConvMLP`'s own modules: contiguous NCHW
    input, each depthwise and downsampling conv wrapped in ``permute(...).contiguous()`` copies, the channel
    MLPs through ``nn.Linear``.
    (B, 3, H, W) -> logits (B, num_classes)."""

    def __init__(self, model: ConvMLP):
        super().__init__()
        self.model = model

    @staticmethod
    def _conv_nhwc(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return conv(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).contiguous()

    @staticmethod
    def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return mlp.fc2(mlp.act(mlp.fc1(x)))  # nn.Linear, i.e. the BLAS matmul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.tokenizer.block(x.contiguous())
        for block in m.conv_stages.conv_blocks:
            x = x + block(x)
        x = m.conv_stages.downsample(x).permute(0, 2, 3, 1)
        for stage in m.stages:
            for blk in stage.blocks:
                x = x + blk.drop_path(self._mlp(blk.channel_mlp1, blk.norm1(x)))
                x = self._conv_nhwc(blk.connect, blk.connect_norm(x))
                x = x + blk.drop_path(self._mlp(blk.channel_mlp2, blk.norm2(x)))
            if isinstance(stage.downsample_mlp, ConvDownsample):
                x = self._conv_nhwc(stage.downsample_mlp.downsample, x)
        return m.head(m.norm(x).mean(dim=(1, 2)))


# ---- building and running one configuration (in the child process) ---------------------------------
def _build(cfg: Config):
    """(step, extras) for ``cfg``: the step runs one inference batch or one training step, ``extras()`` returns
    what the row reports besides time and memory (the onnx path's parity)."""
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    model = BUILDERS[cfg.model]().to(device)
    x = torch.randn(cfg.batch, 3, cfg.res, cfg.res, device=device)
    if cfg.path == 'onnx':
        return _onnx_build(model.fuse(inplace=True) if cfg.fused else model.eval(), x, cfg.keep_fp32)
    if cfg.path == 'pt2e':
        return _pt2e_build(model.eval(), x, cfg.keep_fp32, cfg.max_autotune)
    if cfg.path == 'baseline':
        net: nn.Module = ReleaseForward(model)
    else:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        if cfg.fused:
            model = model.fuse(inplace=True)
            if cfg.dtype != 'fp32' and not cfg.compiled:  # eager: cast weights once, not every call
                model = model.to(DTYPES[cfg.dtype])  # (compiled with freezing folds the casts itself)
        model.set_grad_checkpointing(cfg.checkpointing)
        net = model
    net.train(cfg.mode == 'train')
    if cfg.compiled:
        if cfg.mode == 'infer' and device.type == 'cpu':
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True  # weights become constants: prepacked oneDNN kernels
        net = torch.compile(net, fullgraph=True)
    autocast = torch.autocast(device.type, dtype=DTYPES[cfg.dtype], enabled=cfg.dtype != 'fp32')

    if cfg.mode == 'infer':
        def step():
            with torch.no_grad(), autocast:
                return net(x)
        return step, dict

    target = torch.randint(0, 1000, (cfg.batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05,
                                  fused=True if cfg.path != 'baseline' else None)  # baseline: torch's default
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == 'fp16')
    loss_fn = nn.CrossEntropyLoss()

    def step():
        with autocast:
            loss = loss_fn(net(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step, dict


def _onnx_build(model: ConvMLP, x: torch.Tensor, keep_fp32: str = ''):
    """(step, extras) for the ``onnx`` path: ``model`` exported (:func:`src.deploy.export.onnx_bytes`), with
    ``keep_fp32`` quantized to int8 (:mod:`src.deploy.quantize`, calibrated on ``x``), and run by ONNX Runtime on
    ``x`` with torch's thread count; the step returns the logits as a tensor, ``extras()`` the parity with the
    eager model, ONNX Runtime's version, the share of a step in products (:mod:`src.perf.product_share`) and,
    for int8, the nodes in int8 and the seconds quantization took."""
    import onnxruntime as ort
    from ..deploy.export import INPUT_NAME, onnx_bytes, onnx_session
    data, info = onnx_bytes(model, x), {}
    if keep_fp32:
        from ..deploy import quantize as q
        start = time.perf_counter()
        int8 = q.quantize(q.prepare(data).onnx, x.numpy(), q.Recipe(keep_fp32=keep_fp32))
        data = int8.onnx
        info = dict(int8_nodes=sum(q.op_summary(data)['int8'].values()), fp32_nodes=int8.fp32_nodes,
                    quantize_s=time.perf_counter() - start)
    session = onnx_session(data)  # torch's threads
    feed = {INPUT_NAME: x.numpy()}

    def step():
        return torch.from_numpy(session.run(None, feed)[0])
    return step, lambda: dict(eager_parity(model, step, x), onnxruntime=ort.__version__,
                              products_share=onnx_products_share(data, feed, torch.get_num_threads()), **info)


def _pt2e_build(model: ConvMLP, x: torch.Tensor, keep_fp32: str, max_autotune: bool = False):
    """(step, extras) for the ``pt2e`` path: ``model`` quantized by PT2E as ``tools/quantize.py --backend pt2e``
    does (:mod:`src.deploy.pt2e`: fused, calibrated on ``x``, saved and loaded back), compiled by inductor
    (``max_autotune``: as :func:`~src.deploy.pt2e.compile_int8` says); the build runs the step once, so the
    compilation is not timed. ``extras()``: the parity with the eager model, the products in int8, the seconds
    quantization and compilation took."""
    from ..deploy import pt2e
    start = time.perf_counter()
    int8 = pt2e.quantize(model, x.numpy(), keep_fp32)
    quantized = time.perf_counter()
    run = pt2e.compile_int8(pt2e.load(int8.data), max_autotune)  # the saved program, as a service loads it
    run(x)
    compiled = time.perf_counter()

    def step():
        return run(x)
    return step, lambda: dict(eager_parity(model.fuse(), step, x), int8_nodes=sum(int8.nodes['int8'].values()),
                              fp32_nodes=int8.fp32_modules, quantize_s=quantized - start,
                              compile_s=compiled - quantized)


@torch.no_grad()
def eager_parity(model: nn.Module, step: Callable[[], torch.Tensor], x: torch.Tensor) -> Dict[str, float]:
    """Max abs difference between the logits of ``step()`` (ONNX Runtime, a PT2E graph) and the eager fp32
    ``model`` on ``x``, and the share of images whose top-1 class agrees."""
    out, eager = step(), model.eval()(x)
    return dict(max_abs_diff=(out - eager).abs().max().item(),
                top1_agreement=(out.argmax(1) == eager.argmax(1)).float().mean().item())


def _rss_kib(field: str) -> Optional[int]:
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith(field + ':'):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path('/proc/self/clear_refs').write_text('5')
        return True
    except OSError:
        return False


def peak_tensor_bytes(step: Callable[[], object]) -> int:
    """Most bytes of CPU tensors allocated by ``step()`` and alive at the same time, from the profiler's
    allocation and free events (the CPU counterpart of ``torch.cuda.max_memory_allocated``)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]')
    live = peak = 0
    for _, nbytes in events:  # frees carry negative sizes
        live += nbytes
        peak = max(peak, live)
    return peak


def run_config(cfg: Config, iters: int, warmup: int, threads: int) -> Dict:
    """Measure ``cfg`` in this process: seconds per step (best and mean of ``iters`` after ``warmup``),
    images/s (from the best step) and peak memory in MiB (see the module docstring for the methods)."""
    import gc
    torch.set_num_threads(threads)
    malloc_kept = keep_freed_memory() if cfg.malloc == 'keep' else False
    cuda = cfg.device.startswith('cuda')
    step, extras = _build(cfg)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gc.collect()
    base = torch.cuda.memory_allocated() if cuda else _rss_kib('VmRSS')
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1) if cfg.path == 'floor' else warmup):  # the floor: never time a first call
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if cfg.path == 'floor':
        timers = []
        for _ in range(iters):
            with ProductTimer(sync) as timer:
                step()
            timers.append(timer)
        seconds = [t.seconds for t in timers]
        return dict(config=dataclasses.asdict(cfg), label=cfg.label, best_sec=min(seconds),
                    mean_sec=sum(seconds) / len(seconds), images_per_s=cfg.batch / min(seconds),
                    tensor_mib=float('nan'), rss_mib=float('nan'), malloc_kept=malloc_kept, warmup_s=warmup_s,
                    iters=iters, threads=threads, products_per_step=len(timers[0].ops), loadavg=os.getloadavg()[0])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    resettable = cuda or _reset_peak_rss()
    times, cpu_times = [], []
    for _ in range(iters):
        t, cpu = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - cpu)
    rss_mib = float('nan')
    if cuda:
        tensor_mib = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        if base is not None:
            import resource
            hwm = _rss_kib('VmHWM') if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss_mib = (hwm - base) / 1024
        # ONNX Runtime's buffers are not torch tensors: only RSS sees them
        tensor_mib = float('nan') if cfg.path == 'onnx' else peak_tensor_bytes(step) / 2 ** 20
    best = min(times)  # best of N: the least disturbed step on a shared machine
    # the onnx path's share comes with its extras; max-autotune's C++ GEMMs run inside the compiled graph's call,
    # where the profiler cannot tell them from the element-wise loops
    profiled = {}
    if cfg.mode == 'infer' and not cuda and cfg.path in ('fast', 'pt2e') and not cfg.max_autotune:
        profiled['products_share'] = torch_products_share(step)
    result = dict(config=dataclasses.asdict(cfg), label=cfg.label, best_sec=best,
                  mean_sec=sum(times) / len(times), images_per_s=cfg.batch / best, tensor_mib=tensor_mib,
                  rss_mib=rss_mib, malloc_kept=malloc_kept, warmup_s=warmup_s, iters=iters, threads=threads,
                  loadavg=os.getloadavg()[0], cpu_images_per_s=cfg.batch / max(min(cpu_times), 1e-9), **profiled)
    return dict(result, **extras())


def measure(cfg: Config, iters: int = 5, warmup: int = 2, threads: int = 2, timeout: float = 1800) -> Dict:
    """Run ``cfg`` in a fresh process (see the module docstring); an ``error`` key on failure."""
    request = json.dumps(dict(config=dataclasses.asdict(cfg), iters=iters, warmup=warmup, threads=threads))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, '-m', 'src.perf.benchmark'], input=request, capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(config=dataclasses.asdict(cfg), label=cfg.label, error=f'timed out after {timeout:.0f}s')
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        return dict(config=dataclasses.asdict(cfg), label=cfg.label, error=tail)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the floor: the time a step spends in matrix products ---------------------------------------------
PRODUCT_OPS = frozenset([torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default,
                         torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default])


class ProductTimer(TorchDispatchMode):
    """Inside ``with ProductTimer(sync) as timer:``, every matrix product torch runs (convolution forward and
    backward, mm, addmm, bmm; autograd's backward included) runs as usual and is timed: ``timer.ops`` lists
    ``(op, seconds)`` in call order, ``timer.seconds`` is their sum. Everything else runs untimed."""

    def __init__(self, sync: Callable[[], None] = lambda: None):
        super().__init__()
        self.sync = sync
        self.ops: List[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in PRODUCT_OPS:
            return func(*args, **kwargs)
        self.sync()
        start = time.perf_counter()
        out = func(*args, **kwargs)
        self.sync()
        self.ops.append((str(func), time.perf_counter() - start))
        return out

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds in self.ops)


# ---- machine limits and model cost ------------------------------------------------------------------
def matmul_peak_gflops(dtype: str = 'fp32', threads: int = 2, sizes: Sequence[int] = (1024, 2048),
                       device: str = 'cpu', repeats: int = 10) -> float:
    """The machine's practical peak in ``dtype``: best GFLOP/s of an n x n x n matrix multiply over ``sizes``
    and ``repeats`` tries each (the best try is the one least disturbed by other work on the machine). On
    CPU the product runs both as BLAS ``a @ b`` and as oneDNN's 1x1 convolution (the kernel our channel MLPs
    and convs use, often the faster of the two), and the better counts."""
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    best = 0.
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
        b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
        products = [lambda: a @ b]
        if device == 'cpu':  # rows of a as n pixels of a channels-last (1, n, n, 1) map, b as n 1x1 filters
            a_map, filters = a.view(1, n, 1, n).permute(0, 3, 1, 2), b.view(n, n, 1, 1)
            products.append(lambda: F.conv2d(a_map, filters))
        for product in products:
            product()
            for _ in range(repeats):
                sync()
                t = time.perf_counter()
                product()
                sync()
                best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of ``aten.convolution_backward``: each gradient it computes (input, weight) takes exactly the
    multiply-adds of the forward convolution. torch's own formula ignores ``groups`` for the weight gradient
    and so counts a depthwise conv's weight gradient ``groups`` times over (ConvMLP-S training: 16.1
    instead of 14.3 GFLOP per image)."""
    from torch.utils.flop_counter import conv_flop_count
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def step_flops(model: str, res: int, mode: str) -> float:
    """FLOPs of one image's forward (``infer``) or forward + backward (``train``) at ``res`` x ``res``,
    counted by torch's FlopCounterMode (a multiply-add is 2 FLOPs) with the convolution backward counted by
    :func:`_conv_backward_flops`."""
    from torch.utils.flop_counter import FlopCounterMode
    net = BUILDERS[model]().train(mode == 'train')
    x = torch.randn(1 if mode == 'infer' else 2, 3, res, res)  # train: 2 images so BatchNorm has statistics
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        if mode == 'infer':
            with torch.no_grad():
                net.eval()(x)
        else:
            net(x).sum().backward()
    return counter.get_total_flops() / x.shape[0]


@torch.no_grad()
def bf16_agreement(model: str = 'convmlp_s', n: int = 256, res: int = 64, threads: int = 2,
                   dtype: str = 'bf16') -> Dict[str, float]:
    """Top-1 agreement of the fast ``dtype`` autocast path (BN folded, channels-last, weights cast) with
    the fp32 model on ``n`` fixed inputs: sklearn's digits, upscaled to ``res`` px.

    Two heads on the same random-init backbone (no released weights offline): ``random_head`` (the init
    head: logit margins ~0.02, a harsh lower bound) and ``probe_head`` (a ridge-regression linear probe
    fit on the fp32 features, i.e. a trained classifier with realistic margins)."""
    from sklearn.datasets import load_digits
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images[:n], dtype=torch.float32).div_(16).unsqueeze(1).expand(-1, 3, -1, -1)
    x = nn.functional.interpolate(images, size=(res, res), mode='bilinear', align_corners=False)
    x = (x - 0.5) / 0.25
    labels = torch.tensor(digits.target[:n])
    ref = BUILDERS[model]().eval()
    feats = ref.forward_head(ref.forward_features(x), pre_logits=True)
    result = dict(random_head=_agreement(ref, x, dtype))
    centered = feats - feats.mean(0)
    gram = centered.T @ centered + 1e-3 * centered.pow(2).sum() / len(feats) * torch.eye(feats.shape[1])
    onehot = nn.functional.one_hot(labels, 10).float()
    weight = torch.linalg.solve(gram, centered.T @ (onehot - onehot.mean(0))).T
    ref.reset_classifier(10)
    ref.head.weight.copy_(weight)
    ref.head.bias.copy_(onehot.mean(0) - feats.mean(0) @ weight.T)
    result['probe_head'] = _agreement(ref, x, dtype)
    result['probe_head_fp32_accuracy'] = (ref(x).argmax(1) == labels).float().mean().item()
    return result


def _agreement(model: ConvMLP, x: torch.Tensor, dtype: str) -> float:
    fast = model.fuse().to(memory_format=torch.channels_last, dtype=DTYPES[dtype])
    with torch.autocast('cpu', dtype=DTYPES[dtype]):
        low = fast(x)
    return (low.argmax(1) == model(x).argmax(1)).float().mean().item()


def _child() -> None:
    request = json.loads(sys.stdin.read())
    result = run_config(Config(**request['config']), request['iters'], request['warmup'], request['threads'])
    print(json.dumps(result))


if __name__ == '__main__':
    _child()
    exit_process(0)


# ---- the benchmark run behind tools/benchmark.py ------------------------------------------------------
def matrix(models: List[str], modes: List[str], dtypes: List[str], compiled: List[bool], fused: List[bool],
           batch: int, res: int, device: str = 'cpu', malloc_rows: bool = True,
           floor_rows: bool = True, onnx_rows: bool = True, int8_keep_fp32: Sequence[str] = (),
           int8_backends: Sequence[str] = ('onnxruntime',)) -> List[Config]:
    """Baseline first, then every fast-path combination, per model and mode (fused: inference only).
    ``malloc_rows``: also the baseline with kept freed memory and the fp32 eager fast path with glibc's
    default malloc, so the allocator's share of each speed-up is visible. ``onnx_rows``: CPU inference with
    fp32 among ``dtypes``, the model under ONNX Runtime (path ``onnx``, fused as the last eager fp32 row), and
    after it the int8 model, one row per backend of ``int8_backends`` (``onnxruntime``, ``pt2e``,
    ``pt2e-max-autotune``) and group of ``int8_keep_fp32`` (the convolutions left in fp32).
    ``floor_rows``: last, per dtype, the fast path's matrix products alone (path ``floor``)."""
    configs = []
    for model in models:
        for mode in modes:
            common = dict(model=model, mode=mode, batch=batch, res=res, device=device)
            configs.append(Config(path='baseline', **common))
            if malloc_rows:
                configs.append(Config(path='baseline', malloc='keep', **common))
                configs.append(Config(fused=mode == 'infer' and True in fused, malloc='system', **common))
            for dtype in dtypes:
                for comp in compiled:
                    for fuse in (fused if mode == 'infer' else [False]):
                        configs.append(Config(dtype=dtype, compiled=comp, fused=fuse, **common))
            if onnx_rows and mode == 'infer' and device == 'cpu' and 'fp32' in dtypes:
                configs.append(Config(path='onnx', fused=True in fused, **common))
                configs += [Config(dtype=INT8, keep_fp32=keep, fused=True in fused, **INT8_BACKENDS[backend], **common)
                            for backend in int8_backends for keep in int8_keep_fp32]
            if floor_rows:
                configs += [Config(path='floor', dtype=dtype, fused=mode == 'infer' and True in fused, **common)
                            for dtype in dtypes]
    return configs


def checkpointing_configs(model: str, batch: int, res: int, device: str = 'cpu') -> List[Config]:
    """fp32 eager training step with and without gradient checkpointing (the memory comparison)."""
    return [Config(model, 'train', 'fast', checkpointing=ckpt, batch=batch, res=res, device=device)
            for ckpt in (False, True)]


def sweep_configs(model: str, labels: List[Config], resolutions: List[int], batches: List[int],
                  res_batch: int) -> List[Config]:
    """Each of ``labels`` (a template config) over resolutions (batch ``res_batch``) and batches (res 224)."""
    out = [dataclasses.replace(t, model=model, batch=res_batch, res=r) for t in labels for r in resolutions]
    out += [dataclasses.replace(t, model=model, batch=b, res=224) for t in labels for b in batches]
    return list(dict.fromkeys(out))


def annotate(results: List[Dict], peaks: Dict[str, float]) -> None:
    """Add ``x_baseline`` (images/s over the reference baseline with the same model, mode, batch, resolution),
    ``gflops`` (achieved) and ``pct_peak`` (of the measured matmul peak in the row's dtype)."""
    flops_cache: Dict[tuple, float] = {}
    for r in results:
        if 'error' in r:
            continue
        c = r['config']
        key = (c['model'], c['res'], c['mode'])
        if key not in flops_cache:
            flops_cache[key] = step_flops(*key)
        r['gflops'] = flops_cache[key] * c['batch'] / r['best_sec'] / 1e9
        r['pct_peak'] = 100 * r['gflops'] / peaks[c['dtype']] if c['dtype'] in peaks else float('nan')
        base = next((b for b in results if 'error' not in b and Config(**b['config']).is_reference and
                     all(b['config'][k] == c[k] for k in ('model', 'mode', 'batch', 'res', 'device'))), None)
        r['x_baseline'] = r['images_per_s'] / base['images_per_s'] if base else float('nan')


def markdown_table(results: List[Dict], emulated: Sequence[str] = ()) -> str:
    """The rows as a markdown table; rows in a dtype of ``emulated`` (not native on this CPU) say so; the last
    column is the machine's load average when the row was timed."""
    head = ('| model | step | path | batch | res | img/s | x baseline | tensor MiB | RSS MiB | GFLOP/s | '
            '% matmul peak | load |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    rows = []
    for r in results:
        c = r['config']
        label = r['label'] + (f" ({c['dtype']} emulated)" if c['dtype'] in emulated else '')
        lead = f"| {c['model']} | {c['mode']} | {label} | {c['batch']} | {c['res']} |"
        if 'error' in r:
            rows.append(f"{lead} failed: {r['error'][:80]} | | | | | | |")
            continue
        cells = ['-' if r.get(k, float('nan')) != r.get(k) else f'{r[k]:.{digits}f}'  # NaN/absent: not measured
                 for k, digits in (('x_baseline', 2), ('tensor_mib', 0), ('rss_mib', 0), ('gflops', 1),
                                   ('pct_peak', 0), ('loadavg', 1))]
        rows.append(f"{lead} {r['images_per_s']:.2f} | {' | '.join(cells)} |")
    return '\n'.join([head] + rows)


def int8_speedups(results: List[Dict]) -> List[Dict]:
    """For each int8 row: its images/s over the faster of the two fp32 inference paths of the same model,
    batch and resolution in the same run (``fp32 eager fused`` and ``fp32 onnxruntime``), which one that was,
    the same ratio in images per CPU-second (``cpu_speedup``), the load averages of the rows compared and, where
    both rows have their share of time in products (:mod:`src.perf.product_share`), ``products_speedup`` (the
    fp32 row's time in products over the int8 row's) and ``ceiling`` (the fp32 step over the int8 row's time in
    products: its speed-up if nothing but the products took time)."""
    out = []
    for r in results:
        c = r['config']
        if 'error' in r or c['dtype'] != INT8:
            continue
        same = [b for b in results if 'error' not in b and b['config']['dtype'] == 'fp32' and b['config']['mode'] == 'infer'
                and all(b['config'][k] == c[k] for k in ('model', 'batch', 'res', 'device'))
                and ((b['config']['path'] == 'fast' and b['config']['fused'] and not b['config']['compiled']
                      and b['config']['malloc'] == 'keep') or b['config']['path'] == 'onnx')]
        if same:
            fastest = max(same, key=lambda b: b['images_per_s'])
            by_cpu = max(same, key=lambda b: b['cpu_images_per_s'])
            out.append(dict(label=r['label'], model=c['model'], batch=c['batch'], res=c['res'],
                            images_per_s=r['images_per_s'], fp32_label=fastest['label'],
                            fp32_images_per_s=fastest['images_per_s'], speedup=r['images_per_s'] / fastest['images_per_s'],
                            cpu_speedup=r['cpu_images_per_s'] / by_cpu['cpu_images_per_s'], cpu_fp32_label=by_cpu['label'],
                            loadavg=[x.get('loadavg') for x in (r, fastest)], **_products_ratios(r, fastest)))
    return out


def _products_ratios(int8: Dict, fp32: Dict) -> Dict[str, float]:
    if 'products_share' not in int8 or 'products_share' not in fp32:
        return {}
    int8_products = int8['products_share'] * int8['best_sec']
    return dict(products_speedup=fp32['products_share'] * fp32['best_sec'] / int8_products,
                ceiling=fp32['best_sec'] / int8_products)


def linearity(results: List[Dict]) -> Dict[str, Dict[int, float]]:
    """Per label: seconds per image per pixel at each resolution over the same at the smallest (1.0 = linear)."""
    out: Dict[str, Dict[int, float]] = {}
    by_label: Dict[str, List[Dict]] = {}
    for r in results:
        if 'error' not in r:
            by_label.setdefault(r['label'], []).append(r)
    for label, rows in by_label.items():
        rows = sorted(rows, key=lambda r: r['config']['res'])
        per_px = [r['best_sec'] / r['config']['batch'] / r['config']['res'] ** 2 for r in rows]
        out[label] = {r['config']['res']: p / per_px[0] for r, p in zip(rows, per_px)}
    return out


def plot_sweeps(res_rows: List[Dict], batch_rows: List[Dict], path: Path, title: str) -> None:
    """PNG: throughput and peak memory against resolution and against batch size, one line per path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (rows, key, xlabel) in enumerate(((res_rows, 'res', 'resolution (px, square)'),
                                               (batch_rows, 'batch', 'batch size'))):
        labels = list(dict.fromkeys(r['label'] for r in rows if 'error' not in r))
        for label in labels:
            pts = sorted(((r['config'][key], r) for r in rows if r.get('label') == label and 'error' not in r),
                         key=lambda p: p[0])
            xs = [p[0] for p in pts]
            line, = axes[0, col].plot(xs, [p[1]['images_per_s'] for p in pts], 'o-', label=label)
            axes[1, col].plot(xs, [p[1]['tensor_mib'] for p in pts], 'o-', color=line.get_color(), label=label)
            axes[1, col].plot(xs, [p[1]['rss_mib'] for p in pts], 'x--', color=line.get_color(), alpha=.6)
        axes[0, col].set_ylabel('images / s')
        axes[1, col].set_ylabel('peak memory, MiB (o- tensors, x-- RSS)')
        for row in range(2):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].set_xscale('log', base=2)
            axes[row, col].set_yscale('log')
            axes[row, col].grid(True, which='both', alpha=.3)
        axes[0, col].legend(fontsize=8)
    axes[0, 0].set_title('cost vs resolution (linear in pixels = slope -2 of img/s)')
    axes[0, 1].set_title('cost vs batch size (at 224 px)')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
