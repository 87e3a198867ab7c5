"""Do the class activation maps fall on the object? Measured on the shapes crops, whose object masks are known.

For each held-out crop (``tools/make_shapes.py ... --crops TRAIN VAL --crop-masks``) and each method and layer
of :mod:`src.explain.cam`: the share of the map's mass inside the crop's own object mask (:func:`mask_share`),
explaining the class the model predicts (or the true one). Three references:

  * the mask's share of the crop's area: what a uniform map gets;
  * a centred Gaussian: every crop is centred on its object, so a map that knows only "the middle" already
    beats the area share (:func:`centred_gaussian`);
  * the same architecture with random weights, same method and layer: what the layer's geometry gives
    without learning.

A layer whose map is 2x2 (the last stage at 64 px) cannot place anything finer than a quadrant: the table
gives every layer with its map size, and marks the rows whose maps carry information (at least
:data:`FOLD` x the area share and above the random weights). Its command line, which also writes the
table and the picture of ``docs/cam.md``, is ``tools/cam_localization.py``.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..utils.errors import UsageError
from .shapes import CLASSES

__all__ = ['Crops', 'load_crops', 'to_batch', 'mask_share', 'centred_gaussian', 'top1', 'measure',
           'informative', 'markdown_table', 'pick_crops', 'subset', 'figure_panels', 'crop_grid', 'FOLD']

FOLD = 2.0          # "carries information": mean in-mask share at least this many times the mean area share
SIGMA = 0.25        # the centred Gaussian's standard deviation, as a fraction of the crop's side


@dataclass
class Crops:
    """Held-out crops with their object masks."""
    images: np.ndarray      # (N, S, S, 3) uint8
    masks: np.ndarray       # (N, S, S) bool, the crop's own object
    labels: np.ndarray      # (N,) int, index into CLASSES
    paths: List[Path]
    context: float = 1.0    # > 1: fields that many times a crop's side, the object anywhere (make_crops' context)

    @property
    def kind(self) -> str:
        """'crops' (centred on their objects) or 'fields' (the object anywhere in a wider field)."""
        return 'crops' if self.context == 1 else 'fields'


def load_crops(root, split: str = 'validation', limit: int = 0) -> Crops:
    """The crops of ``root/SPLIT/CLASS/*.png`` with their masks ``root/masks/SPLIT/CLASS/*.png``, in file-index
    order (the first ``limit`` if > 0). UsageError if the folder or its masks are missing."""
    from PIL import Image
    root = Path(root)
    if not (root / split).is_dir():
        raise UsageError(f'no {split} crops in {root}: give the cls/ folder of tools/make_shapes.py --crops')
    if not (root / 'masks' / split).is_dir():
        raise UsageError(f'{root} has no masks/{split}: write the crops with tools/make_shapes.py ... --crops '
                         f'TRAIN VAL --crop-masks (same seed: same crops)')
    items = sorted((int(p.stem), k, p) for k, c in enumerate(CLASSES) for p in (root / split / c).glob('*.png'))
    if limit > 0:
        items = items[:limit]
    if not items:
        raise UsageError(f'no crops in {root / split}')
    images, masks = [], []
    for _, _, path in items:
        mask_path = root / 'masks' / split / path.parent.name / path.name
        if not mask_path.is_file():
            raise UsageError(f'{path} has no mask {mask_path}: regenerate the crops with --crop-masks')
        with Image.open(path) as im:
            images.append(np.asarray(im.convert('RGB')))
        with Image.open(mask_path) as im:
            masks.append(np.asarray(im) > 127)
    stamp = root / '.complete'
    context = float(json.loads(stamp.read_text()).get('context', 1.0)) if stamp.is_file() else 1.0
    return Crops(np.stack(images), np.stack(masks), np.array([k for _, k, _ in items]), [p for _, _, p in items],
                 context)


def to_batch(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float, normalised (the crops are the model's input size: nothing
    resized, so the masks stay aligned)."""
    x = (images.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def mask_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) share of each map's mass inside its mask: maps (N, H, W) >= 0, masks (N, H, W) bool. An all-zero
    map says nothing about where: it counts as uniform (the mask's area share)."""
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.maximum(total, 1e-12), masks.mean(axis=(1, 2)))


def centred_gaussian(height: int, width: int, sigma: float = SIGMA) -> np.ndarray:
    """(height, width) Gaussian bump on the image centre, standard deviation ``sigma`` x each side, peak 1."""
    y = (np.arange(height) - (height - 1) / 2) / (sigma * height)
    x = (np.arange(width) - (width - 1) / 2) / (sigma * width)
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / 2)


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, labels: np.ndarray, batch: int = 128) -> Tuple[float, np.ndarray]:
    """(top-1 in %, predicted classes (N,)) of ``model`` (eval mode) on the batch ``x``."""
    model.eval()
    pred = torch.cat([model(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)]).numpy()
    return float((pred == labels).mean() * 100), pred


def measure(models: Dict[str, nn.Module], crops: Crops, mean: Sequence[float], std: Sequence[float],
            methods: Sequence[str], layers: Sequence[str], explain: str = 'predicted', batch: int = 64,
            log: Callable[[str], None] = print, eigen_smooth: bool = False, aug_smooth: bool = False) -> dict:
    """The in-mask share of every method x layer for each model (e.g. {'trained': ..., 'random': ...}).

    ``explain``: 'predicted' (each model's own predicted class) or 'true' (the crop's label); ``eigen_smooth``,
    ``aug_smooth``: the library's smoothings (:func:`src.explain.cam.class_activation_maps`). Returns
    {n, size, area, area_se, centre, centre_se, top1: {model: %}, smooth: [...], rows: [{layer, method,
    map_size, MODEL: mean share, MODEL_se: its standard error, MODEL_s: seconds}, ...]} (rows layer by layer)."""
    from ..explain.cam import maps_by_method, smoothing_names
    if explain not in ('predicted', 'true'):
        raise ValueError(f"explain must be 'predicted' or 'true'; got {explain!r}")
    x = to_batch(crops.images, mean, std)
    area = crops.masks.mean(axis=(1, 2))
    centre = mask_share(np.broadcast_to(centred_gaussian(*crops.masks.shape[1:]), crops.masks.shape), crops.masks)
    smooth = smoothing_names(eigen_smooth, aug_smooth)
    out = dict(n=len(x), size=list(x.shape[2:]), what=crops.kind, explain=explain, smooth=smooth,
               area=float(area.mean()),
               area_se=_se(area), centre=float(centre.mean()),
               centre_se=_se(centre), top1={}, rows=[])
    for name, model in models.items():
        out['top1'][name] = top1(model, x, crops.labels)[0]
    log(f'{len(x)} {crops.kind} at {x.shape[2]}x{x.shape[3]}; top-1 '
        + ', '.join(f'{k} {v:.1f}' for k, v in out['top1'].items())
        + f'; mask area share {out["area"]:.3f}; centred Gaussian {out["centre"]:.3f} ({out["centre"] / out["area"]:.2f}x)')
    for layer in layers:
        rows = {m: dict(layer=layer, method=m) for m in methods}
        for name, model in models.items():
            tic = time.time()
            shares = {m: [] for m in methods}
            for i in range(0, len(x), batch):
                target = None if explain == 'predicted' else [int(c) for c in crops.labels[i:i + batch]]
                results = maps_by_method(model, x[i:i + batch], methods, layer, target, eigen_smooth=eigen_smooth,
                                         aug_smooth=aug_smooth)
                for m, r in results.items():
                    shares[m].append(mask_share(r.maps, crops.masks[i:i + batch]))
                    rows[m]['map_size'] = list(r.map_size)
            seconds = time.time() - tic
            for m in methods:
                s = np.concatenate(shares[m])
                rows[m].update({name: float(s.mean()), f'{name}_se': _se(s), f'{name}_s': seconds / len(methods)})
        for m in methods:
            row = rows[m]
            out['rows'].append(row)
            log(f'  {layer:10s} {m:18s} ' + '  '.join(f'{k} {row[k]:.3f} ({row[k] / out["area"]:.2f}x)' for k in models)
                + f'  [{row["map_size"][0]}x{row["map_size"][1]} map]')
    return out


def _se(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def informative(row: dict, area: float, trained: str = 'trained', baseline: str = 'random') -> bool:
    """The row's maps carry information: at least :data:`FOLD` x the area share and above ``baseline``."""
    return row[trained] >= FOLD * area and row[trained] > row.get(baseline, -1.0)


def markdown_table(result: dict, trained: str = 'trained', baseline: str = 'random') -> str:
    """The rows of :func:`measure` as a Markdown table: a row per layer (with its map size), a column per
    method; each cell the trained model's mean in-mask share as a multiple of the mean area share, then the
    random-weight model's; bold where :func:`informative`."""
    from ..utils.markdown import table
    area = result['area']
    methods = list(dict.fromkeys(r['method'] for r in result['rows']))
    layers = list(dict.fromkeys(r['layer'] for r in result['rows']))
    cells = {(r['layer'], r['method']): r for r in result['rows']}
    rows = []
    for layer in layers:
        h, w = cells[layer, methods[0]]['map_size']
        line = [f'`{layer}` ({h}x{w})']
        for m in methods:
            r = cells[layer, m]
            text = f'{r[trained] / area:.2f}x / {r[baseline] / area:.2f}x'
            line.append(f'**{text}**' if informative(r, area, trained, baseline) else text)
        rows.append(line)
    return table(['layer (map)', *methods], rows)


def pick_crops(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` crops for a picture: the first of each class in file order, in turn (no choice
    by how their maps look)."""
    per_class = [np.flatnonzero(labels == k) for k in range(len(CLASSES))]
    picks = [per_class[i % len(per_class)][i // len(per_class)] for i in range(count)]
    return np.array(picks)


def crop_grid(crops: Crops, panels: Sequence[Tuple[str, Dict]], title: str = ''):
    """A matplotlib figure: the crops across (their mask outlined in white; the true class above), then one
    row per entry of ``panels``: (row label, {'maps': (N, H, W), 'classes': [...], 'shares': (N,)}), each map
    over its crop in jet, titled with the class it explains (red when that is not the true one) and its
    in-mask share."""
    from matplotlib.figure import Figure
    n, rows = len(crops.images), 1 + len(panels)
    cell, label_w, title_h = 1.1, 1.45, 0.35 if title else 0.05
    fig = Figure(figsize=(label_w + n * cell, title_h + rows * (cell + 0.12)), dpi=100)
    axes = fig.subplots(rows, n, squeeze=False)
    fig.subplots_adjust(left=label_w / fig.get_figwidth(), right=0.995, bottom=0.005,
                        top=1 - title_h / fig.get_figheight(), wspace=0.06, hspace=0.22)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for j in range(n):
        axes[0, j].imshow(crops.images[j], interpolation='nearest')
        axes[0, j].contour(crops.masks[j], levels=[0.5], colors='w', linewidths=0.8)
        axes[0, j].set_title(CLASSES[crops.labels[j]], fontsize=7, pad=2)
    axes[0, 0].set_ylabel('crop, mask', fontsize=7, rotation=0, ha='right', va='center', labelpad=6)
    for r, (label, panel) in enumerate(panels, start=1):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(crops.images[j], interpolation='nearest')
            ax.imshow(panel['maps'][j], cmap='jet', alpha=0.5, vmin=0, vmax=1, interpolation='nearest')
            ax.contour(crops.masks[j], levels=[0.5], colors='w', linewidths=0.6)
            c = panel['classes'][j]
            ax.set_title(f"{CLASSES[c]} {panel['shares'][j]:.2f}", fontsize=6.5, pad=1.5,
                         color='black' if c == crops.labels[j] else 'red')
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha='right', va='center', labelpad=6)
    if title:
        fig.suptitle(title, fontsize=7.5, y=1 - 0.04 / fig.get_figheight(), va='top')
    return fig


def figure_panels(models: Dict[str, nn.Module], crops: Crops, mean, std,
                  rows: Sequence[Tuple[str, str, str]], eigen_smooth: bool = False,
                  aug_smooth: bool = False) -> List[Tuple[str, Dict]]:
    """The panels of :func:`crop_grid` for ``rows`` of (model name, method, layer): maps of the predicted
    class (smoothed as :func:`measure`) and their in-mask shares."""
    from ..explain.cam import class_activation_maps, smoothing_names
    x = to_batch(crops.images, mean, std)
    smooth = ''.join(f' +{name}' for name in smoothing_names(eigen_smooth, aug_smooth))
    panels = []
    for name, method, layer in rows:
        r = class_activation_maps(models[name], x, method, layer, eigen_smooth=eigen_smooth, aug_smooth=aug_smooth)
        panels.append((f'{method}{smooth}\n{layer} ({r.map_size[0]}x{r.map_size[1]})\n{name}',
                       dict(maps=r.maps, classes=r.classes, shares=mask_share(r.maps, crops.masks))))
    return panels


def subset(crops: Crops, index: np.ndarray) -> Crops:
    """The crops at ``index``."""
    return Crops(crops.images[index], crops.masks[index], crops.labels[index], [crops.paths[i] for i in index],
                 crops.context)
