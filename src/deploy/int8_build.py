"""A ConvMLP classifier to a checked int8 ONNX model (behind ``tools/quantize.py``).

Steps: the calibration folder's images split, seeded, into calibration images and a held-out *check* slice
(never the evaluation images); both preprocessed as the model's data config says
(:func:`src.model_options.preprocess`); the model fused, exported (logits, or with ``dense`` the four maps of
``forward_dense``), pre-processed and quantized (:mod:`src.deploy.quantize`); the int8 model compared with the
fp32 one on the check slice (:mod:`src.deploy.fidelity`). With ``keep_fp32='auto'`` the convolutions kept in
fp32 widen (first conv, tokenizer, stem) until the check meets the target: top-1 agreement >=
``min_agreement`` % for a classifier, every dense map's mean cosine >= ``min_cosine`` for a backbone. Then
optionally the evaluation on a held-out folder, and the report (:func:`report_markdown`).
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from ..model_options import preprocess
from ..utils.errors import UsageError
from ..utils.images import FolderImages, read_images
from ..utils.markdown import table
from .export import exported_module, onnx_bytes, onnx_session, output_names
from .fidelity import Runner, compare, session_runner
from .metadata import archive_extra_files, onnx_with_metadata
from .quantize import KEEP_FP32_ORDER, KEEP_FP32_WHY, Recipe, op_summary, prepare, quantize

__all__ = ['AUTO', 'BACKENDS', 'CalibrationSplit', 'split_calibration', 'check_disjoint', 'held_out_labels', 'image_batches',
           'Attempt', 'Int8Build', 'build_int8', 'evaluate', 'meets_target', 'build_summary', 'report_markdown',
           'fidelity_table']

AUTO = 'auto'
BACKENDS = ('onnxruntime', 'pt2e')
PT2E_QUANTIZER = ("torchao's X86InductorQuantizer, default static config (uint8 activations per tensor, histogram "
                  "observer; int8 weights per output channel), the conv stage's residual adds quantized at their inputs "
                  "(src/deploy/pt2e.py); runs compiled by inductor with frozen weights")
# auto starts with the first conv in fp32: all in int8 missed the check on the crop classifier, and a 3-channel
# int8 conv is no faster than the fp32 one (docs/deployment.md)
AUTO_ORDER = KEEP_FP32_ORDER[1:]


@dataclasses.dataclass
class CalibrationSplit:
    """The calibration folder's images: those the quantizer calibrates on and the held-out check slice."""
    calibration: List[Path]
    check: List[Path]
    folder_images: int


def split_calibration(images: FolderImages, calibration: int, check: int, seed: int = 0) -> CalibrationSplit:
    """A seeded shuffle of the folder's images: the first ``check`` (at most a third of the folder) are the
    check slice, the next ``calibration`` the calibration images; each list sorted."""
    paths = list(images.paths)
    random.Random(seed).shuffle(paths)
    n_check = min(check, len(paths) // 3)
    return CalibrationSplit(sorted(paths[n_check:n_check + calibration]), sorted(paths[:n_check]), len(paths))


def check_disjoint(calibration: FolderImages, held_out: FolderImages) -> None:
    """:class:`UsageError` if the held-out folder holds any image of the calibration folder: int8 is evaluated
    on images its calibration folder does not have."""
    calibration_files = {p.resolve() for p in calibration.paths}
    shared = [p for p in held_out.paths if p.resolve() in calibration_files]
    if shared:
        raise UsageError(f'the held-out folder shares {len(shared)} images with the calibration folder (e.g. '
                         f'{shared[0]}): calibrate on training images and evaluate on held-out ones')


def held_out_labels(images: FolderImages, class_names: Sequence[str]) -> Tuple[Optional[np.ndarray], str]:
    """Each held-out image's class index in the model's outputs (-1: unknown) and how they were matched:
    class folders by name when every one is a class of the model, else by sorted order when there are as
    many folders as classes; None without class folders or when neither fits (agreement is still measured)."""
    if not images.classes:
        return None, 'no class folders: top-1 agreement only'
    names = list(class_names)
    if set(images.classes) <= set(names):
        to_model = [names.index(c) for c in images.classes]
        how = 'class folders matched to the model\'s classes by name'
    elif len(images.classes) == len(names):
        to_model = list(range(len(names)))
        how = 'class folders matched to the outputs by sorted order (the model\'s classes have other names)'
    else:
        return None, (f'{len(images.classes)} class folders for {len(names)} classes, names not the model\'s: '
                      f'top-1 agreement only')
    return np.array([to_model[i] if i >= 0 else -1 for i in images.labels]), how


def _load(paths: Sequence[Path], data_cfg: dict) -> np.ndarray:
    return preprocess(read_images(paths), data_cfg).numpy()


def image_batches(paths: Sequence[Path], data_cfg: dict, labels: Optional[np.ndarray] = None,
                  batch: int = 64) -> Iterator[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """(images (B, 3, H, W) float32 preprocessed as ``data_cfg`` says, their labels or None), ``batch`` at a
    time, reading the files as it goes."""
    for i in range(0, len(paths), batch):
        yield _load(paths[i:i + batch], data_cfg), None if labels is None else labels[i:i + batch]


def meets_target(result: dict, min_agreement: float, min_cosine: float) -> bool:
    """The check's verdict on a :meth:`~src.deploy.fidelity.Fidelity.result`."""
    if 'worst_mean_cosine' in result:
        return result['worst_mean_cosine'] >= min_cosine
    return result['top1_agreement'] >= min_agreement


@dataclasses.dataclass
class Attempt:
    """One quantization of the widening: the group kept in fp32, the nodes, the check's result (None if
    there was no check slice) and whether it met the target."""
    keep_fp32: str
    fp32_nodes: List[str]
    check: Optional[dict]
    meets_target: bool


@dataclasses.dataclass
class Int8Build:
    """The chosen int8 model (a :class:`~src.deploy.quantize.QuantizedModel` of ONNX Runtime or a
    :class:`~src.deploy.pt2e.Pt2eInt8`), every attempt of the widening in order, the output names, the
    backend, the fp32 model's serialised size, the runners of both models (the evaluation reuses them: a
    compiled PT2E graph compiles once), and whether ONNX pre-processing's symbolic shape inference completed."""
    int8: object
    attempts: List[Attempt]
    outputs: List[str]
    backend: str
    fp32_bytes: int
    fp32_run: Runner
    int8_run: Runner
    symbolic_shapes: bool = True

    @property
    def met_target(self) -> bool:
        return self.attempts[-1].meets_target

    @property
    def int8_bytes(self) -> bytes:
        """The file to write: the int8 ONNX model, or the PT2E program (``torch.export.save``)."""
        return self.int8.onnx if self.backend == 'onnxruntime' else self.int8.data


def build_int8(model: nn.Module, data_cfg: dict, split: CalibrationSplit, keep_fp32: str = AUTO,
               dense: bool = False, min_agreement: float = 99., min_cosine: float = 0.995,
               recipe: Recipe = Recipe(), threads: Optional[int] = None,
               log: Callable[[str], None] = print, backend: str = 'onnxruntime',
               metadata: Optional[Dict[str, object]] = None) -> Int8Build:
    """Quantize ``model`` (a ConvMLP classifier, eval mode; fused here) to int8, calibrated on
    ``split.calibration``, with ``backend`` (:data:`BACKENDS`: ONNX Runtime's quantizer, run by ONNX Runtime;
    or PT2E, run compiled by inductor); ``keep_fp32``: a group of :data:`~src.deploy.quantize.KEEP_FP32_ORDER`,
    or ``'auto'``: the narrowest group of the widening whose check meets the target (the widest if none
    does: :attr:`Int8Build.met_target` says so). ``metadata`` (:func:`src.deploy.metadata.serving_metadata`)
    is stored in the int8 file, which is checked as written."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}; got {backend!r}')
    calibration = _load(split.calibration, data_cfg)
    check = _load(split.check, data_cfg) if split.check else None
    fused = model.fuse()
    names = output_names(fused, dense)
    symbolic_shapes = True
    if backend == 'onnxruntime':
        fp32_onnx = onnx_bytes(fused, _tensor(calibration[:2]), dense=dense)
        prepared = prepare(fp32_onnx)
        symbolic_shapes, fp32_bytes = prepared.symbolic_shapes, len(fp32_onnx)
        fp32_run = session_runner(onnx_session(fp32_onnx, threads))

        def quantize_group(group: str):
            int8 = quantize(prepared.onnx, calibration, dataclasses.replace(recipe, keep_fp32=group))
            if metadata is not None:
                int8.onnx = onnx_with_metadata(int8.onnx, metadata)
            return int8, int8.fp32_nodes, session_runner(onnx_session(int8.onnx, threads))
    else:
        from . import pt2e
        fp32_run = pt2e.runner(exported_module(fused, dense).eval(), threads=threads)
        fp32_bytes = sum(t.numel() * t.element_size() for t in fused.state_dict().values())

        def quantize_group(group: str):
            extra = None if metadata is None else archive_extra_files(metadata)
            int8 = pt2e.quantize(model, calibration, group, dense, extra_files=extra)
            # the check runs the saved program, as written
            return int8, int8.fp32_modules, pt2e.runner(pt2e.compile_int8(pt2e.load(int8.data)), threads=threads)
    attempts: List[Attempt] = []
    for group in (AUTO_ORDER if keep_fp32 == AUTO else (keep_fp32,)):
        int8, kept, int8_run = quantize_group(group)
        result = None if check is None else compare(fp32_run, int8_run, [(check, None)], names)
        ok = result is not None and meets_target(result, min_agreement, min_cosine)
        attempts.append(Attempt(group, kept, result, ok))
        what = 'module' if backend == 'pt2e' else 'node'
        verdict = '' if result is None else ' (meets the target)' if ok else ' (below the target)'
        log(f'  kept in fp32: {group} ({len(kept)} {what}{"s" * (len(kept) != 1)}); check on {len(split.check)} '
            f'held-out calibration images: {_summary(result)}{verdict}')
        if ok or check is None:
            break
    return Int8Build(int8, attempts, names, backend, fp32_bytes, fp32_run, int8_run, symbolic_shapes)


def _tensor(array: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(array))


def _summary(result: Optional[dict]) -> str:
    if result is None:
        return 'not checked (no check images)'
    if 'worst_mean_cosine' in result:
        return 'mean cosine ' + ', '.join(f'{k} {v["mean"]:.4f}' for k, v in result['cosine'].items())
    return f'top-1 agreement {result["top1_agreement"]:.2f}%, largest logit difference {result["max_logit_diff"]:.3f}'


def evaluate(build: Int8Build, paths: Sequence[Path], data_cfg: dict, labels: Optional[np.ndarray]) -> dict:
    """fp32 against int8 on held-out images (:meth:`~src.deploy.fidelity.Fidelity.result`)."""
    return compare(build.fp32_run, build.int8_run, image_batches(paths, data_cfg, labels), build.outputs)


def report_markdown(report: dict) -> str:
    """The short human report of ``tools/quantize.py``'s JSON report."""
    build, calib = report['build'], report['calibration']
    pt2e = build.get('backend') == 'pt2e'
    what = 'module' if pt2e else 'node'
    lines = [f"# int8 model: {report['files']['int8']}", '',
             f"- model: {report['model']['arch']} ({report['model']['weights']}), {report['model']['outputs']}",
             f"- files: fp32 {'weights' if pt2e else 'ONNX'} {report['files']['fp32_mib']:.2f} MiB, int8 "
             f"{report['files']['int8_mib']:.2f} MiB",
             f"- calibration: {len(calib['images'])} images of {calib['folder']} ({calib['folder_images']} there), "
             f"{calib['check_images']} others of it held out for the check; preprocessing: {calib['preprocessing']}",
             f"- quantizer: {build['quantizer']}" if pt2e else
             "- quantize_static: " + ', '.join(f'{k}={v}' for k, v in build['quantize_static_args'].items()
                                                if k != 'nodes_to_exclude'),
             f"- kept in fp32: {build['keep_fp32']} ({KEEP_FP32_WHY[build['keep_fp32']]}): "
             + (', '.join(build['fp32_nodes']) or f'no {what}'),
             f"- why: {build['why']}",
             f'- int8 {what}s: ' + ', '.join(f'{k} {v}' for k, v in build['ops']['int8'].items()),
             f'- fp32 {what}s: ' + (', '.join(f'{k} {v}' for k, v in build['ops']['fp32'].items()) or 'none'), '']
    rows = []
    for a in build['attempts']:
        value = '-' if a['check'] is None else (f"{a['check']['worst_mean_cosine']:.4f}" if report['dense']
                                                 else f"{a['check']['top1_agreement']:.2f}")
        rows.append([a['keep_fp32'], len(a['fp32_nodes']), value, 'yes' if a['meets_target'] else 'no'])
    check = 'check: ' + ('worst mean cosine' if report['dense'] else 'top-1 agreement %')
    lines.append(table(['kept in fp32', f'{what}s', check, 'meets target'], rows, align='-rr-'))
    evaluation = report.get('evaluation')
    if evaluation:
        lines += ['', f"Held-out evaluation on {evaluation['folder']} ({evaluation['result']['images']} images; "
                  f"{evaluation['labels']}):", '', fidelity_table(evaluation['result'])]
    return '\n'.join(lines) + '\n'


def fidelity_table(result: dict) -> str:
    """A :meth:`~src.deploy.fidelity.Fidelity.result` as a Markdown table."""
    if 'cosine' in result:
        return table(['map', 'cosine mean', 'cosine min'],
                     [[name, f"{c['mean']:.5f}", f"{c['min']:.5f}"] for name, c in result['cosine'].items()],
                     align='-rr')
    top1 = ([f"{result['top1_fp32']:.2f}", f"{result['top1_int8']:.2f}",
             f"{result['top1_int8'] - result['top1_fp32']:+.2f}"] if 'top1_fp32' in result else ['-'] * 3)
    return table(['images', 'top-1 fp32', 'top-1 int8', 'difference', 'top-1 agreement %', 'largest logit diff',
                  'mean logit diff', 'fp32 logit range'],
                 [[result['images'], *top1, f"{result['top1_agreement']:.2f}", f"{result['max_logit_diff']:.3f}",
                   f"{result['mean_logit_diff']:.4f}", f"{result['logit_range']:.2f}"]], align='r' * 8)


def build_summary(build: Int8Build, keep_fp32: str, min_agreement: float, min_cosine: float) -> Dict[str, object]:
    """The ``build`` part of the JSON report: the chosen group and why, the nodes, the arguments, op counts."""
    chosen = build.attempts[-1]
    target = (f'every map\'s mean cosine >= {min_cosine}' if 'cosine' in (chosen.check or {})
              else f'top-1 agreement >= {min_agreement}%')
    if keep_fp32 != AUTO:
        why = f'--keep-fp32 {keep_fp32} (given)'
    elif chosen.check is None:
        why = 'no check images: the narrowest group, unchecked'
    elif chosen.meets_target:
        narrower = [a.keep_fp32 for a in build.attempts[:-1]]
        why = (f'the narrowest group whose check meets the target ({target})'
               + (f'; {", ".join(narrower)} did not' if narrower else ''))
    else:
        why = f'no group met the target ({target}) on the check'
    common = dict(backend=build.backend, keep_fp32=chosen.keep_fp32, why=why, fp32_nodes=chosen.fp32_nodes,
                  attempts=[dataclasses.asdict(a) for a in build.attempts])
    if build.backend == 'pt2e':
        return dict(common, quantizer=PT2E_QUANTIZER, ops=build.int8.nodes)
    return dict(common, pre_processing='quant_pre_process: ' + ('symbolic shape inference, ' if build.symbolic_shapes
                                                                else 'symbolic shape inference incomplete (skipped), ')
                + "ONNX Runtime's basic graph optimizations, ONNX shape inference",
                quantize_static_args=build.int8.quantize_static_args, recipe=dataclasses.asdict(build.int8.recipe),
                ops=op_summary(build.int8.onnx))
