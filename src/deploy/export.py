"""Export ConvMLP to ONNX, TorchScript and a ``torch.export`` program, each checked against the eager model
before it is written.

* ONNX: the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``; the dynamo exporter would
  need onnxscript), opset 17, dynamic batch, height and width on the input and on every output.
  The check runs onnxruntime on the same inputs as the eager model.
* TorchScript: traced (ConvMLP has no data-dependent control flow; the input checks of
  ``ConvMLP.forward`` are Python-side and are not part of the traced graph). The check reloads the
  serialised module and runs it.
* ``torch.export`` (``.pt2``, PyTorch's successor to TorchScript): dynamic batch, height and width (sides of
  :data:`PROGRAM_MIN_SIDE` px and more); the check reloads the program and runs it.

With its classifier head the model is exported as it is and returns logits (B, num_classes); built with
``classifier_head=False`` (or with ``dense=True``), its :meth:`~src.convmlp.ConvMLP.forward_dense` is exported:
the four feature maps (strides 4, 8, 16, 32). Fuse BatchNorm first (``model.fuse()``) for an inference-only
graph with fewer ops. The channel MLPs are exported as MatMul (``channel_linear`` in ``src/convmlp.py``).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..convmlp import PatchMerge

__all__ = ['exported_module', 'output_names', 'onnx_bytes', 'onnx_session', 'onnx_classifier', 'onnx_max_diff',
           'torchscript_bytes', 'torchscript_classifier', 'torchscript_max_diff', 'PROGRAM_MIN_SIDE',
           'program_sides_dynamic', 'program_bytes', 'program_max_diff']

OPSET = 17
INPUT_NAME = 'image'
# a torch.export program's smallest height and width: at 32 px the stride-32 map is one pixel, a size
# torch.export specializes, which would fix the program's sides
PROGRAM_MIN_SIDE = 33


class DenseMaps(nn.Module):
    """A headless ConvMLP with :meth:`~src.convmlp.ConvMLP.forward_dense` as its forward:
    (B, 3, H, W) -> four NCHW maps, for the exporters (its plain forward returns the last map only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.model.forward_dense(x)


def _is_dense(model: nn.Module, dense: Optional[bool]) -> bool:
    """``dense`` if given, else whether ``model`` was built without its classifier head."""
    return not getattr(model, 'classifier_head', True) if dense is None else dense


def exported_module(model: nn.Module, dense: Optional[bool] = None) -> nn.Module:
    """What the exporters trace: the model itself, or :class:`DenseMaps` of it (headless, or ``dense``)."""
    return DenseMaps(model) if _is_dense(model, dense) else model


def output_names(model: nn.Module, dense: Optional[bool] = None) -> List[str]:
    """``['logits']`` for a classifier; ``['feature_s4', 'feature_s8', ...]`` for a dense backbone (or a
    classifier with ``dense=True``)."""
    if not _is_dense(model, dense):
        return ['logits']
    return [f'feature_s{info["reduction"]}' for info in model.feature_info]


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's notes on the Python-side input checks and the deprecation notes of the
    TorchScript-based exporters (both still supported by torch 2.x)."""
    with warnings.catch_warnings():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter('ignore', category)
        yield


def _as_list(out) -> List[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _max_diffs(run: Callable[[torch.Tensor], Sequence], model: nn.Module,
               inputs: Sequence[torch.Tensor]) -> Dict[Tuple, float]:
    """Max abs difference between ``run(x)`` (the exported file's outputs) and the eager ``model``'s, over
    all outputs, per input shape."""
    model.eval()
    eager = exported_module(model)
    diffs = {}
    for x in inputs:
        got, want = run(x), [t.numpy() for t in _as_list(eager(x))]
        diffs[tuple(x.shape)] = max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                                    for a, b in zip(got, want))
    return diffs


@torch.no_grad()
def onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int = OPSET, dense: Optional[bool] = None) -> bytes:
    """The serialised ONNX model of ``model`` (eval mode), traced on ``example`` (B, 3, H, W); batch,
    height and width are dynamic. Its outputs: :func:`output_names` (``dense``: the four maps of
    ``forward_dense`` even of a classifier)."""
    names = output_names(model, dense)
    dynamic = {INPUT_NAME: {0: 'batch', 2: 'height', 3: 'width'}}
    dynamic.update({n: {0: 'batch'} if n == 'logits' else {0: 'batch', 2: f'{n}_height', 3: f'{n}_width'}
                    for n in names})
    buf = io.BytesIO()
    with _quiet_tracing():
        torch.onnx.export(exported_module(model, dense).eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=names, dynamic_axes=dynamic,
                          do_constant_folding=True)
    return buf.getvalue()


def onnx_session(onnx_model: Union[bytes, str], threads: Optional[int] = None, profile_prefix: Optional[str] = None):
    """An ONNX Runtime session on the CPU for a serialised model (or a file): ``threads`` intra-op threads
    (None: as many as torch's, so OMP_NUM_THREADS where it is set, else one per core; ONNX Runtime's own default
    ignores OMP_NUM_THREADS, and its spinning threads then fight a process's neighbours for the cores), one
    inter-op thread, every graph optimization; with ``profile_prefix``, ONNX Runtime's profiling on, its JSON
    file named from that prefix."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(onnx_model, options, providers=['CPUExecutionProvider'])


def onnx_classifier(path, threads: Optional[int] = None):
    """An ONNX classifier of ``tools/quantize.py`` or ``tools/export.py`` as a
    :class:`~src.model_options.Classifier`: its model runs the file in ONNX Runtime ((N, 3, H, W) float32 tensor
    in, logits out), its class names and data config are the file's metadata (:mod:`src.deploy.metadata`).
    ValueError naming the file if it holds no metadata or outputs dense maps instead of logits."""
    from .metadata import served_classifier

    def load():
        session = onnx_session(str(path), threads)
        return lambda images: torch.from_numpy(session.run(None, {INPUT_NAME: images.numpy()})[0])
    return served_classifier(path, load)


def torchscript_classifier(path):
    """A TorchScript classifier of ``tools/export.py`` (``.ts.pt``) as a :class:`~src.model_options.Classifier`,
    as :func:`onnx_classifier` (its model the loaded module, eval mode, on the CPU)."""
    from .metadata import served_classifier
    return served_classifier(path, lambda: torch.jit.load(str(path), map_location='cpu').eval())


@torch.no_grad()
def onnx_max_diff(onnx_model: bytes, model: nn.Module, inputs: Sequence[torch.Tensor]) -> Dict[Tuple, float]:
    """Max abs difference between onnxruntime (CPU) and the eager ``model`` over all outputs, per input
    shape."""
    session = onnx_session(onnx_model)
    return _max_diffs(lambda x: session.run(None, {INPUT_NAME: x.numpy()}), model, inputs)


@torch.no_grad()
def torchscript_bytes(model: nn.Module, example: torch.Tensor, extra_files: Optional[Dict[str, str]] = None) -> bytes:
    """The serialised TorchScript module (``torch.jit.trace`` of ``model`` in eval mode on ``example``), with
    ``extra_files`` in its archive (:func:`src.deploy.metadata.archive_extra_files`)."""
    with _quiet_tracing():
        traced = torch.jit.trace(exported_module(model).eval(), example, strict=getattr(model, 'classifier_head', True))
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files=extra_files or {})
    return buf.getvalue()


@torch.no_grad()
def torchscript_max_diff(scripted: bytes, model: nn.Module, inputs: Sequence[torch.Tensor]) -> Dict[Tuple, float]:
    """Max abs difference between the reloaded TorchScript module and the eager ``model``, per input shape."""
    with _quiet_tracing():
        loaded = torch.jit.load(io.BytesIO(scripted), map_location='cpu').eval()
    return _max_diffs(lambda x: [t.numpy() for t in _as_list(loaded(x))], model, inputs)


def program_sides_dynamic(model: nn.Module) -> bool:
    """Whether :func:`program_bytes` keeps ``model``'s height and width dynamic: not for an ablation row with
    :class:`~src.convmlp.PatchMerge`, whose padding to even sizes torch.export cannot keep symbolic (its
    constraint solver fails), so those programs take the traced sides only."""
    return not any(isinstance(m, PatchMerge) for m in model.modules())


@torch.no_grad()
def program_bytes(model: nn.Module, example: torch.Tensor, extra_files: Optional[Dict[str, str]] = None) -> bytes:
    """The serialised ``torch.export`` program (a ``.pt2`` archive) of ``model`` in eval mode, traced on
    ``example`` (sides at least :data:`PROGRAM_MIN_SIDE`) with dynamic batch (1 to 4096), height and width
    (:data:`PROGRAM_MIN_SIDE` to 4096; fixed at the example's where :func:`program_sides_dynamic` says), with
    ``extra_files`` in its archive."""
    dims = {0: torch.export.Dim('batch', min=1, max=4096)}
    if program_sides_dynamic(model):
        dims.update({2: torch.export.Dim('height', min=PROGRAM_MIN_SIDE, max=4096),
                     3: torch.export.Dim('width', min=PROGRAM_MIN_SIDE, max=4096)})
    pair = example[:1].repeat(2, 1, 1, 1)  # batch 2: a batch of 1 would be specialized
    program = torch.export.export(exported_module(model).eval(), (pair,), dynamic_shapes=(dims,))
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files=extra_files)
    return buf.getvalue()


@torch.no_grad()
def program_max_diff(data: bytes, model: nn.Module, inputs: Sequence[torch.Tensor]) -> Dict[Tuple, float]:
    """Max abs difference between the reloaded ``torch.export`` program and the eager ``model``, per input shape."""
    loaded = torch.export.load(io.BytesIO(data)).module()
    return _max_diffs(lambda x: [t.numpy() for t in _as_list(loaded(x))], model, inputs)
