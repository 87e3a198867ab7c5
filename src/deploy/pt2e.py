"""int8 on PyTorch's own path: PT2E static quantization with torchao's x86 inductor quantizer, run by
``torch.compile`` (inductor, frozen weights) as oneDNN int8 kernels, with LayerNorm, GELU and the
quantize / dequantize steps between them compiled into fused C++ loops.

The recipe (docs/deployment.md has the measurements):

* the fp32 model: BatchNorm folded (``model.fuse()``), its channel MLPs as :class:`FlatMlp` (the same
  weights and state-dict keys), exported with ``torch.export`` (strict: the quantizer finds linears and
  their GELU by the modules that made them);
* :func:`convmlp_quantizer`: torchao's ``X86InductorQuantizer`` with its default static config
  (activations uint8 per tensor from a histogram observer, weights int8 per output channel from their
  min/max, the full 8-bit range), plus the residual adds of the conv stage quantized at their inputs;
* the convolutions of a group of :data:`~src.deploy.quantize.KEEP_FP32_ORDER` left in fp32 (by module:
  :func:`fp32_modules`), as in the ONNX Runtime recipe;
* calibration: the converted model's observers see the calibration images; ``convert_pt2e`` then folds the
  weights to int8.

The result (:class:`Pt2eInt8`) is a ``torch.export`` program (``.pt2``, dynamic batch) that
:func:`load` reads back and :func:`compile_int8` compiles on first use (tens of seconds on 2 cores, per input
shape); it needs torchao imported (its inductor passes turn the quantized patterns into oneDNN kernels)
and a C++ compiler, as every ``torch.compile`` on CPU does.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..convmlp import Mlp
from ..utils.threads import torch_threads
from .export import DenseMaps, exported_module
from .fidelity import Runner, batched

__all__ = ['FlatMlp', 'flat_mlps', 'convmlp_quantizer', 'fp32_modules', 'Pt2eInt8', 'quantize', 'compile_int8',
           'load', 'pt2_classifier', 'runner']


class FlatMlp(Mlp):
    """:class:`~src.convmlp.Mlp` over a channels-last map flattened to (B*H*W, C): fc1 -> GELU -> fc2 as
    module calls on a 2-d input, (B, H, W, C) -> (B, H, W, C). The x86 inductor passes lower a quantized
    linear to oneDNN only for 2-d and 3-d inputs (a 4-d one stays an fp32 MKL product), and the quantizer
    fuses linear + GELU only when both are modules called one after the other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        out = self.fc2(self.act(self.fc1(x.reshape(batch * height * width, channels))))
        return out.reshape(batch, height, width, -1)


def flat_mlps(model: nn.Module) -> nn.Module:
    """``model`` with every :class:`~src.convmlp.Mlp` turned into a :class:`FlatMlp` in place (same
    parameters, same state-dict keys)."""
    for module in model.modules():
        if type(module) is Mlp:
            module.__class__ = FlatMlp
    return model


def _quantizer_classes():
    """torchao's x86 inductor quantizer module, imported quietly (torch logs a deprecation note about one of
    its enums on import)."""
    pytree_log = logging.getLogger('torch.utils._pytree')
    level = pytree_log.level
    pytree_log.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    finally:
        pytree_log.setLevel(level)
    return x86


def convmlp_quantizer():
    """A quantizer (its class is built on first use: torchao is imported lazily): torchao's
    ``X86InductorQuantizer`` with its default static config that also quantizes the inputs of every
    residual add fed by a ReLU (the conv stage's blocks: conv -> ReLU -> + shortcut). Without it, inductor's
    freezing pass matches "quantized conv with a ReLU, then an add" as a conv with a binary post-op and
    stops on an assertion (torchao 0.18: ``kwargs["postop_name"] == "none"``); with it the conv writes uint8
    and the add reads two quantized tensors."""
    x86 = _quantizer_classes()

    class _Quantizer(x86.X86InductorQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            super().annotate(model)
            relus = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)
            spec = x86.get_input_act_qspec(self.global_config)
            for node in model.graph.nodes:
                if node.target is not torch.ops.aten.add.Tensor or x86.QUANT_ANNOTATION_KEY in node.meta:
                    continue
                inputs = [a for a in node.args if isinstance(a, torch.fx.Node)]
                if len(inputs) != 2 or not any(a.target in relus for a in inputs):
                    continue
                node.meta[x86.QUANT_ANNOTATION_KEY] = x86._X86InductorQuantizationAnnotation(
                    input_qspec_map={a: spec for a in inputs}, _annotated=True)
            return model

    quantizer = _Quantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    return quantizer


def fp32_modules(model: nn.Module, group: str) -> List[str]:
    """Names of the modules of ``model`` (as :func:`~src.deploy.export.exported_module` wraps it) left in
    fp32 for a group of :data:`~src.deploy.quantize.KEEP_FP32_ORDER`: ``first_conv`` the first Conv2d,
    ``tokenizer`` the tokenizer, ``stem`` the tokenizer and the conv stage."""
    prefix = 'model.' if isinstance(model, DenseMaps) else ''
    names = dict(model.named_modules())
    convs = [name for name, m in names.items() if isinstance(m, nn.Conv2d)]
    stem = [prefix + 'tokenizer'] + ([prefix + 'conv_stages'] if prefix + 'conv_stages' in names else [])
    return dict(none=[], first_conv=convs[:1], tokenizer=stem[:1], stem=stem)[group]


@dataclasses.dataclass
class Pt2eInt8:
    """A quantized model: the converted graph (runs eagerly, slowly: dequantize, fp32 op, quantize), the
    modules left in fp32, and its serialised ``torch.export`` program (:attr:`data`, dynamic batch)."""
    graph: torch.fx.GraphModule
    fp32_modules: List[str]
    data: bytes
    nodes: dict


@torch.no_grad()
def quantize(model: nn.Module, calibration: np.ndarray, keep_fp32: str = 'first_conv', dense: bool = False,
             batch: int = 16, extra_files: Optional[Dict[str, str]] = None) -> Pt2eInt8:
    """``model`` (a ConvMLP, eval mode; fused and flattened on a copy here) quantized by PT2E, calibrated on
    ``calibration`` (N, 3, H, W) float32, preprocessed; ``dense``: the four maps of ``forward_dense``;
    ``extra_files``: stored in the saved program (``torch.export.save``'s, e.g. :mod:`src.deploy.metadata`'s)."""
    import copy
    _quantizer_classes()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    fp32 = exported_module(flat_mlps(copy.deepcopy(model).eval().fuse(inplace=True)), dense).eval()
    example = torch.from_numpy(np.ascontiguousarray(calibration[np.arange(2) % len(calibration)]))  # batch 2: dynamic
    dynamic = ({0: torch.export.Dim('batch', min=1, max=4096)},)
    graph = torch.export.export(fp32, (example,), dynamic_shapes=dynamic, strict=True).module()
    quantizer = convmlp_quantizer()
    kept = fp32_modules(fp32, keep_fp32)
    for name in kept:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(graph, quantizer)
    for i in range(0, len(calibration), batch):
        prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + batch])))
    converted = _drop_unused_tensors(convert_pt2e(prepared))
    buf = io.BytesIO()
    torch.export.save(torch.export.export(converted, (example,), dynamic_shapes=dynamic, strict=False), buf,
                      extra_files=extra_files)
    return Pt2eInt8(converted, kept, buf.getvalue(), _node_counts(converted))


def _drop_unused_tensors(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` without the parameters and buffers no node reads: ``convert_pt2e`` folds each quantized
    weight into a new int8 constant and leaves the fp32 original registered (the saved program would carry
    both, 45 MiB instead of 11 for ConvMLP-S)."""
    used = {node.target for node in graph.graph.nodes if node.op == 'get_attr'}
    for name in [n for n, _ in graph.named_parameters()] + [n for n, _ in graph.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition('.')
            module = graph.get_submodule(owner) if owner else graph
            module._parameters.pop(attr, None)
            module._buffers.pop(attr, None)
    return graph


def _node_counts(graph: torch.fx.GraphModule) -> dict:
    """How many products are quantized (a dequantize_per_channel feeds their weight) and how many stay fp32."""
    products = {torch.ops.aten.linear.default: 'linear', torch.ops.aten.conv2d.default: 'conv2d'}
    counts = {'int8': {}, 'fp32': {}}
    for node in graph.graph.nodes:
        kind = products.get(node.target)
        if kind is None:
            continue
        weight = node.args[1]
        quantized = isinstance(weight, torch.fx.Node) and 'dequantize_per_channel' in str(weight.target)
        side = counts['int8' if quantized else 'fp32']
        side[kind] = side.get(kind, 0) + 1
    return counts


def compile_int8(graph: nn.Module, max_autotune: bool = False) -> Callable[[torch.Tensor], object]:
    """``graph`` compiled by inductor with frozen weights (the step that lowers the quantized patterns to
    oneDNN int8 kernels); it compiles on the first call of each input shape. ``max_autotune``: each quantized
    linear also gets inductor's C++ GEMM template, which has int8 micro-kernels for AVX512-VNNI and AMX only,
    and runs whichever of it and oneDNN's kernel times faster at compile (minutes the first time, then from
    inductor's cache; on a CPU without those instructions oneDNN's kernel is the only choice)."""
    _quantizer_classes()  # registers torchao's inductor passes
    import torch._inductor.config as inductor_config
    compiled = torch.compile(graph, dynamic=False)
    settings = dict(freezing=True)
    if max_autotune:
        settings.update(max_autotune=True, max_autotune_gemm_backends='CPP,ATEN')

    def run(x: torch.Tensor):
        with torch.no_grad(), inductor_config.patch(**settings), warnings.catch_warnings():
            warnings.filterwarnings('ignore', 'To copy construct from a tensor', UserWarning)  # inductor's own
            return compiled(x)
    return run


def load(data: bytes) -> nn.Module:
    """The quantized graph of a saved :attr:`Pt2eInt8.data` (or a ``.pt2`` file's bytes), not compiled."""
    _quantizer_classes()
    return torch.export.load(io.BytesIO(data)).module()


def pt2_classifier(path, compiled: bool = False, max_autotune: bool = False):
    """A ``.pt2`` classifier (int8 of ``tools/quantize.py --backend pt2e``, or fp32 of ``tools/export.py --format
    pt2``) as a :class:`~src.model_options.Classifier`, as :func:`src.deploy.export.onnx_classifier`. Its model
    runs the program as it is (an int8 one's arithmetic emulated: dequantize, fp32 op, quantize), or,
    ``compiled``, as :func:`compile_int8` makes it (for int8, oneDNN's int8 kernels, what a service runs; tens
    of seconds per input shape first; ``max_autotune`` as :func:`compile_int8`'s)."""
    from .metadata import served_classifier

    def load_program():
        graph = load(Path(path).read_bytes())
        return compile_int8(graph, max_autotune) if compiled else graph
    return served_classifier(path, load_program)


def runner(fn: Callable[[torch.Tensor], object], batch: int = 32, threads: Optional[int] = None) -> Runner:
    """A :data:`~src.deploy.fidelity.Runner` of ``fn`` (a model or a compiled graph): every output on the
    images, ``batch`` at a time with ``threads`` torch threads (None: as set); a last, smaller batch padded
    with zeros to ``batch``, so a compiled graph sees one shape."""
    def run_batch(chunk: np.ndarray) -> List[np.ndarray]:
        x = torch.zeros((batch, *chunk.shape[1:]))
        x[:len(chunk)] = torch.from_numpy(chunk)
        with torch.no_grad(), torch_threads(threads):
            out = fn(x)
        return [o[:len(chunk)].numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]
    return batched(run_batch, batch)
