"""How closely a quantized model follows its fp32 original on the same images.

* A classifier (one output, logits (N, K)): top-1 of each against the images' labels where they are known,
  the share of images whose top-1 class agrees, the largest and the mean absolute logit difference (beside
  the fp32 logits' range, for scale).
* A dense backbone (the four maps of ``forward_dense``, (N, C, h, w) each): per map, the cosine similarity
  of the int8 map to the fp32 map of each image (the map flattened), its mean and its minimum over images.

:class:`Fidelity` accumulates batch by batch, so a held-out set of any size streams through; percentages
are 0-100.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['Fidelity', 'Runner', 'batched', 'compare', 'session_runner']

# images (N, 3, H, W) float32 -> the model's outputs as arrays, in output order
Runner = Callable[[np.ndarray], List[np.ndarray]]


class Fidelity:
    """fp32 against int8 outputs, batch by batch (:meth:`update`), summed up by :meth:`result`.
    ``output_names``: the models' outputs, ``['logits']`` for a classifier, else the dense maps' names."""

    def __init__(self, output_names: Sequence[str]):
        self.names = list(output_names)
        self.dense = self.names != ['logits']
        self.images = self.labelled = self.agree = self.correct_fp32 = self.correct_int8 = 0
        self.max_diff = self.sum_diff = 0.
        self.logit_min, self.logit_max = np.inf, -np.inf
        self.values = 0
        self.cosines: Dict[str, List[np.ndarray]] = {name: [] for name in self.names}

    def update(self, fp32: Sequence[np.ndarray], int8: Sequence[np.ndarray], labels: Optional[np.ndarray] = None):
        """One batch: the outputs of both models on the same images, in :attr:`names` order, and the images'
        class indices (N,) (-1 where unknown; None: none known)."""
        self.images += len(fp32[0])
        if self.dense:
            for name, a, b in zip(self.names, fp32, int8):
                a = a.reshape(len(a), -1).astype(np.float64)
                b = b.reshape(len(b), -1).astype(np.float64)
                norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                self.cosines[name].append((a * b).sum(1) / np.maximum(norms, 1e-30))
            return
        a, b = fp32[0].astype(np.float64), int8[0].astype(np.float64)
        diff = np.abs(a - b)
        self.max_diff = max(self.max_diff, float(diff.max()))
        self.sum_diff += float(diff.sum())
        self.values += diff.size
        self.logit_min, self.logit_max = min(self.logit_min, float(a.min())), max(self.logit_max, float(a.max()))
        top_a, top_b = a.argmax(1), b.argmax(1)
        self.agree += int((top_a == top_b).sum())
        if labels is not None:
            known = labels >= 0
            self.labelled += int(known.sum())
            self.correct_fp32 += int((top_a[known] == labels[known]).sum())
            self.correct_int8 += int((top_b[known] == labels[known]).sum())

    def result(self) -> dict:
        """Classifier: ``images``, ``top1_agreement``, ``max_logit_diff``, ``mean_logit_diff``,
        ``logit_range`` and, with labels, ``labelled``, ``top1_fp32``, ``top1_int8``. Dense backbone:
        ``images``, ``cosine`` ({map: {mean, min}}) and ``worst_mean_cosine`` (the lowest mean of a map)."""
        if self.dense:
            cosine = {name: dict(mean=float(np.concatenate(c).mean()), min=float(np.concatenate(c).min()))
                      for name, c in self.cosines.items()}
            return dict(images=self.images, cosine=cosine, worst_mean_cosine=min(c['mean'] for c in cosine.values()))
        out = dict(images=self.images, top1_agreement=100. * self.agree / self.images, max_logit_diff=self.max_diff,
                   mean_logit_diff=self.sum_diff / self.values, logit_range=self.logit_max - self.logit_min)
        if self.labelled:
            out.update(labelled=self.labelled, top1_fp32=100. * self.correct_fp32 / self.labelled,
                       top1_int8=100. * self.correct_int8 / self.labelled)
        return out


def batched(run_batch: Callable[[np.ndarray], Sequence[np.ndarray]], batch: int = 32) -> Runner:
    """A :data:`Runner` that calls ``run_batch`` (images -> every output) on ``batch`` images at a time and
    joins each output's parts."""
    def run(images: np.ndarray) -> List[np.ndarray]:
        parts = [run_batch(images[i:i + batch]) for i in range(0, len(images), batch)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
    return run


def session_runner(session, batch: int = 32) -> Runner:
    """A :data:`Runner` of an ONNX Runtime ``session``: every output, ``batch`` images per run."""
    name = session.get_inputs()[0].name
    return batched(lambda images: session.run(None, {name: images}), batch)


def compare(fp32: Runner, int8: Runner, batches: Iterable[Tuple[np.ndarray, Optional[np.ndarray]]],
            output_names: Sequence[str]) -> dict:
    """:meth:`Fidelity.result` of two models (:data:`Runner`) over ``batches`` of (images (N, 3, H, W) float32,
    labels (N,) or None)."""
    fidelity = Fidelity(output_names)
    for images, labels in batches:
        fidelity.update(fp32(images), int8(images), labels)
    return fidelity.result()
