"""Static int8 quantization of an exported ConvMLP with ONNX Runtime's quantizer, calibrated on images.

The recipe (docs/deployment.md has the measurements behind each choice):

* the fp32 model: BatchNorm folded (``model.fuse()``), exported by :func:`src.deploy.export.onnx_bytes`
  (opset 17, dynamic batch, height and width; the channel MLPs as MatMul);
* ONNX Runtime's pre-processing first (:func:`prepare`: ``quant_pre_process``, i.e. symbolic shape
  inference, ONNX Runtime's basic graph optimizations and fusions, ONNX shape inference);
* ``quantize_static`` in QDQ format: activations uint8 (asymmetric, per tensor), weights int8 (symmetric,
  per output channel), the full 8-bit range (no ``reduce_range``), MinMax calibration;
* only the matrix products quantized (Conv, MatMul, Gemm): quantizing every op type the quantizer knows also
  puts Q/DQ pairs around GELU's Erf pattern, Add and LayerNormalization, which breaks ONNX Runtime's GELU
  fusion and gains no accuracy;
* the convolutions that lose most accuracy kept in fp32, by groups found in the graph's structure
  (:func:`node_groups`, widening in :data:`KEEP_FP32_ORDER`): the first conv (it reads the raw image), the
  tokenizer's three convs, the whole convolutional stem (tokenizer and conv stage). Which group a model
  needs is measured, not assumed: the tool quantizes with the narrowest one, compares with fp32 on held-out
  calibration images and widens until int8 agrees (``tools/quantize.py``).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .export import INPUT_NAME

__all__ = ['KEEP_FP32_ORDER', 'KEEP_FP32_WHY', 'QUANTIZED_OP_TYPES', 'Recipe', 'QuantizedModel', 'Prepared', 'prepare',
           'node_groups', 'quantize', 'op_summary']

# the groups of convolutions kept in fp32, from none to the widest; each holds the one before it
KEEP_FP32_ORDER = ('none', 'first_conv', 'tokenizer', 'stem')
KEEP_FP32_WHY = {
    'none': 'every Conv, MatMul and Gemm in int8',
    'first_conv': 'the first conv reads the raw image (3 channels, the widest value range of any input)',
    'tokenizer': "the tokenizer's three 3x3 convs work at half the input resolution, where an error is "
                 "spread over the most positions",
    'stem': 'the convolutional stem (tokenizer and conv stage) feeds every later stage',
}
QUANTIZED_OP_TYPES = ('Conv', 'MatMul', 'Gemm')


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How :func:`quantize` quantizes. The defaults are the recipe of the module docstring."""
    keep_fp32: str = 'first_conv'          # a group of KEEP_FP32_ORDER
    moving_average: bool = False           # min/max as a moving average over calibration batches (EMA 0.01)
    per_channel: bool = True               # weight scales per output channel
    reduce_range: bool = False             # 7-bit weights (for CPUs whose u8 x s8 products can overflow)
    op_types: Tuple[str, ...] = QUANTIZED_OP_TYPES
    calibration_batch: int = 16            # images per calibration forward pass

    def __post_init__(self):
        if self.keep_fp32 not in KEEP_FP32_ORDER:
            raise ValueError(f'keep_fp32 must be one of {KEEP_FP32_ORDER}; got {self.keep_fp32!r}')

    def quantize_static_args(self, nodes_to_exclude: Sequence[str]) -> dict:
        """The keyword arguments of ``onnxruntime.quantization.quantize_static`` for this recipe."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
        return dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=self.per_channel, reduce_range=self.reduce_range,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(self.op_types),
                    nodes_to_exclude=list(nodes_to_exclude),
                    extra_options=dict(WeightSymmetric=True, ActivationSymmetric=False,
                                       CalibMovingAverage=self.moving_average))


@dataclasses.dataclass
class QuantizedModel:
    """An int8 model: its serialised ONNX (``onnx``), the recipe, the nodes left in fp32 and the arguments
    ``quantize_static`` was called with (as strings, for a report)."""
    onnx: bytes
    recipe: Recipe
    fp32_nodes: List[str]
    quantize_static_args: Dict[str, object]


@dataclasses.dataclass
class Prepared:
    """A model after :func:`prepare`: its serialised ONNX, and whether symbolic shape inference completed
    (the ablation rows' PatchMerge pads by computed amounts, which it cannot follow: ONNX's own shape
    inference and the graph optimizations still run)."""
    onnx: bytes
    symbolic_shapes: bool


def prepare(fp32_onnx: bytes) -> Prepared:
    """ONNX Runtime's pre-processing for quantization (``quant_pre_process``: symbolic shape inference,
    ONNX Runtime's basic graph optimizations, ONNX shape inference) of a serialised fp32 model; without the
    symbolic shape inference where it cannot complete."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory(prefix='convmlp-int8-') as tmp, contextlib.chdir(tmp):
        # (in the temporary folder: a failed symbolic shape inference saves its model to the working folder)
        Path('fp32.onnx').write_bytes(fp32_onnx)
        try:
            quant_pre_process('fp32.onnx', 'prepared.onnx')
            symbolic = True
        except Exception as e:  # ONNX Runtime raises a bare Exception for an incomplete inference
            if 'symbolic shape inference' not in str(e):
                raise
            quant_pre_process('fp32.onnx', 'prepared.onnx', skip_symbolic_shape=True)
            symbolic = False
        return Prepared(Path('prepared.onnx').read_bytes(), symbolic)


def node_groups(model) -> Dict[str, List[str]]:
    """The names of the Conv nodes of each group of :data:`KEEP_FP32_ORDER` in an exported ConvMLP graph
    (``onnx.ModelProto``), found by structure, in graph (topological) order:

    ``first_conv``: the first Conv (it reads the image); ``tokenizer``: the Convs before the first MaxPool
    (the conv tokenizer's three; the first conv alone for a patch tokenizer); ``stem``: the Convs before the
    first LayerNormalization (tokenizer, conv stage and its downsampling conv)."""
    nodes = list(model.graph.node)
    convs = [(i, node.name) for i, node in enumerate(nodes) if node.op_type == 'Conv']
    first = [name for _, name in convs[:1]]
    pool = next((i for i, node in enumerate(nodes) if node.op_type == 'MaxPool'), None)
    norm = next((i for i, node in enumerate(nodes) if node.op_type == 'LayerNormalization'), len(nodes))
    tokenizer = [name for i, name in convs if i < pool] if pool is not None and pool < norm else first
    return dict(none=[], first_conv=first, tokenizer=tokenizer, stem=[name for i, name in convs if i < norm])


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over preprocessed images (N, 3, H, W), ``batch`` at a time."""

    def __init__(self, images: np.ndarray, batch: int):
        self.images, self.batch = images, batch
        self._batches: Optional[Iterator[Dict[str, np.ndarray]]] = None
        self.rewind()

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = ({INPUT_NAME: self.images[i:i + self.batch]} for i in range(0, len(self.images), self.batch))


def quantize(prepared_onnx: bytes, calibration: np.ndarray, recipe: Recipe = Recipe()) -> QuantizedModel:
    """Static int8 quantization of ``prepared_onnx`` (:func:`prepare`'s output, serialised), calibrated on
    ``calibration`` (N, 3, H, W) float32, the images preprocessed as the model's data config says."""
    import onnx
    from onnxruntime.quantization import quantize_static
    if not len(calibration):
        raise ValueError('quantize needs at least one calibration image')
    fp32_nodes = node_groups(onnx.load_from_string(prepared_onnx))[recipe.keep_fp32]
    args = recipe.quantize_static_args(fp32_nodes)
    with tempfile.TemporaryDirectory(prefix='convmlp-int8-') as tmp:
        source, quantized = Path(tmp, 'prepared.onnx'), Path(tmp, 'int8.onnx')
        source.write_bytes(prepared_onnx)
        quantize_static(str(source), str(quantized), _CalibrationReader(np.ascontiguousarray(calibration, np.float32),
                                                                        recipe.calibration_batch), **args)
        data = quantized.read_bytes()
    return QuantizedModel(data, recipe, fp32_nodes, {k: v if isinstance(v, (bool, list, dict)) else str(v)
                                                     for k, v in args.items()})


def op_summary(int8_onnx: bytes, op_types: Sequence[str] = QUANTIZED_OP_TYPES) -> Dict[str, Dict[str, int]]:
    """Node counts per op type of a QDQ model: ``int8``, the products (``op_types``) whose input and weight
    come through DequantizeLinear (ONNX Runtime fuses each such pattern into an int8 kernel); ``fp32``, every
    other node but the Q/DQ pairs (kept products, norms, GELU, adds: they compute in fp32);
    ``quantize_dequantize``, the QuantizeLinear and DequantizeLinear nodes."""
    import onnx
    graph = onnx.load_from_string(int8_onnx).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    counts: Dict[str, collections.Counter] = {k: collections.Counter() for k in ('int8', 'fp32',
                                                                                  'quantize_dequantize')}
    for node in graph.node:
        if node.op_type in ('QuantizeLinear', 'DequantizeLinear'):
            kind = 'quantize_dequantize'
        elif node.op_type in op_types and all(producer.get(i) == 'DequantizeLinear' for i in node.input[:2]):
            kind = 'int8'
        else:
            kind = 'fp32'
        counts[kind][node.op_type] += 1
    return {k: dict(sorted(v.items())) for k, v in counts.items()}
