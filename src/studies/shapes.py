"""A tiny synthetic dataset for the detection and segmentation demos and tests: coloured shapes.

Each scene is a noisy background with 1-4 non-overlapping circles, squares (rotated) and triangles of
random colours and sizes. The same scenes are written in two layouts::

    ROOT/coco/{train2017,val2017}/000000.jpg
    ROOT/coco/annotations/instances_{train,val}2017.json     boxes + polygon instance masks, COCO json
    ROOT/ade/images/{training,validation}/000000.jpg
    ROOT/ade/annotations/{training,validation}/000000.png    ADE20K-style semantic labels

Semantic labels follow ADE20K's ``reduce_zero_label`` convention: 0 = "unlabelled" (here: a one-pixel
outline around every shape, ignored after reduction), 1 = background, 2/3/4 = circle/square/triangle,
i.e. classes 0..3 = (background, circle, square, triangle) after reduction.

With ``crops`` (the miniature of ImageNet pretraining, ``tools/transfer.py``), every object of *other*
scenes (their own random streams: never the detection/segmentation scenes) is also cut out into a
classification ImageFolder, train and held-out crops from different scenes::

    ROOT/cls/{train,validation}/{circle,square,triangle}/000000.png

A crop is the square around the object's box, 1.2-1.6 times its size with the centre jittered, kept
inside the scene (so neighbours and the noisy background show), resized to ``crop_size`` px. With
``crop_masks``, each crop's object mask goes beside, outside the ImageFolder (the ground truth of
``src/studies/cam_localization.py``)::

    ROOT/cls/masks/{train,validation}/{circle,square,triangle}/000000.png    0/255, the crop's size

With ``crop_context`` C > 1 (the harder set of that check: the object anywhere in a wider field), the crops
show C times the side around each object at the same object scale: scenes C times larger with the same
shapes in pixels, windows C times the crop's side with the object anywhere inside them (not centred),
written at C x ``crop_size`` px.

Every file is written crash-safely (:mod:`src.utils.atomic`); the annotation json of a split is written last,
so a split with its json present is complete; a crop folder is complete once ``cls/.complete`` exists.

Its command line is ``tools/make_shapes.py``.
"""
from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..utils.atomic import atomic_write

__all__ = ['CLASSES', 'SEG_CLASSES', 'PALETTE', 'make_shapes', 'make_scene', 'make_crops', 'crop_box', 'context_box']

CLASSES = ('circle', 'square', 'triangle')
SEG_CLASSES = ('background',) + CLASSES
PALETTE = [(220, 20, 60), (0, 130, 200), (255, 180, 0)]
SPLITS = (('train', 'train2017', 'training'), ('val', 'val2017', 'validation'))
CROP_SPLITS = ('train', 'validation')
RADIUS = (0.08, 0.22)     # circumradius of a shape, as a fraction of the scene's shorter side
OBJECTS = (1, 4)          # objects per scene (at most; fewer if they do not fit without overlap)


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    """Vertices of a circle (24-gon), square or triangle of circumradius ``r`` around (cx, cy)."""
    n = (24, 4, 3)[kind]
    return [(cx + r * math.cos(angle + 2 * math.pi * i / n), cy + r * math.sin(angle + 2 * math.pi * i / n))
            for i in range(n)]


def make_scene(rng: np.random.Generator, width: int, height: int, radius: Tuple[float, float] = RADIUS,
               objects: Tuple[int, int] = OBJECTS):
    """One scene: (RGB uint8 image (H, W, 3), semantic label (H, W) uint8, instances).

    ``instances`` is a list of (class index 0..2, polygon [(x, y), ...], binary mask (H, W)); ``radius``
    is the range of circumradii (fraction of the shorter side), ``objects`` the range of objects tried."""
    base = rng.integers(40, 216, size=3)
    img = np.clip(base + rng.normal(0, 12, size=(height, width, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(img)
    label = Image.new('L', (width, height), 1)
    draw, draw_label = ImageDraw.Draw(canvas), ImageDraw.Draw(label)
    instances, placed = [], []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        for _attempt in range(20):
            r = float(rng.uniform(*radius) * min(width, height))
            cx, cy = float(rng.uniform(r + 1, width - r - 1)), float(rng.uniform(r + 1, height - r - 1))
            if all(math.hypot(cx - x, cy - y) > r + s + 3 for x, y, s in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        kind = int(rng.integers(0, 3))
        poly = _polygon(kind, cx, cy, r, float(rng.uniform(0, math.pi)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(poly, fill=colour)
        mask = Image.new('L', (width, height), 0)
        ImageDraw.Draw(mask).polygon(poly, fill=1)
        draw_label.polygon(poly, fill=kind + 2, outline=0, width=1)
        instances.append((kind, poly, np.asarray(mask, dtype=np.uint8)))
    return np.asarray(canvas), np.asarray(label), instances


def _write_image(path: Path, array: np.ndarray, fmt: str) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _coco_annotation(ann_id: int, image_id: int, kind: int, poly, mask: np.ndarray) -> dict:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    return dict(id=ann_id, image_id=image_id, category_id=kind + 1, iscrowd=0,
                bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                area=float(mask.sum()), segmentation=[[round(v, 2) for p in poly for v in p]])


def make_shapes(root, num_train: int = 64, num_val: int = 16, size: Tuple[int, int] = (128, 96),
                seed: int = 0, overwrite: bool = False, radius: Tuple[float, float] = RADIUS,
                objects: Tuple[int, int] = OBJECTS, crops: Tuple[int, int] = (0, 0), crop_size: int = 64,
                crop_masks: bool = False, crop_context: float = 1.0) -> Path:
    """Write the dataset under ``root`` (see module docstring); returns ``root`` as a Path.

    Deterministic for a given seed; ``size`` is (width, height), each at least 32; ``radius`` and
    ``objects`` as in :func:`make_scene`. ``crops`` = (train, held-out) *scene* counts for the
    classification crops of :func:`make_crops` (0, 0: none), with their object masks if ``crop_masks``, as wider
    fields if ``crop_context`` > 1. An existing ``root/coco``, ``root/ade`` or
    ``root/cls`` is an error (stale images would join the new set) unless ``overwrite``, which deletes
    those folders first."""
    width, height = size
    if width < 32 or height < 32:
        raise ValueError(f'shapes images need width and height >= 32; got {width}x{height}')
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need at least one train and one val image; got {num_train} and {num_val}')
    _check_layout(radius, objects)
    root = Path(root)
    for layout in (root / 'coco', root / 'ade') + ((root / 'cls',) if any(crops) else ()):
        if layout.exists():
            if not overwrite:
                raise FileExistsError(f'{layout} exists (stale files would mix in)')
            shutil.rmtree(layout)
    rng = np.random.default_rng(seed)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    for (split, coco_dir, ade_dir), count in zip(SPLITS, (num_train, num_val)):
        images, annotations = [], []
        for index in range(count):
            img, label, instances = make_scene(rng, width, height, radius, objects)
            name, image_id = f'{index:06d}', index + 1
            _write_image(root / 'coco' / coco_dir / f'{name}.jpg', img, 'JPEG')
            _write_image(root / 'ade' / 'images' / ade_dir / f'{name}.jpg', img, 'JPEG')
            _write_image(root / 'ade' / 'annotations' / ade_dir / f'{name}.png', label, 'PNG')
            images.append(dict(id=image_id, file_name=f'{name}.jpg', width=width, height=height))
            for kind, poly, mask in instances:
                annotations.append(_coco_annotation(len(annotations) + 1, image_id, kind, poly, mask))
        with atomic_write(root / 'coco' / 'annotations' / f'instances_{coco_dir}.json', 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    if any(crops):
        make_crops(root / 'cls', crops[0], crops[1], size, seed, crop_size, radius, objects, crop_masks, crop_context)
    return root


def _check_layout(radius: Tuple[float, float], objects: Tuple[int, int]) -> None:
    if not 0 < radius[0] <= radius[1] <= 0.45:
        raise ValueError(f'radius range must satisfy 0 < low <= high <= 0.45 (fraction of the shorter side); '
                         f'got {radius[0]}-{radius[1]}')
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f'objects range must satisfy 1 <= low <= high; got {objects[0]}-{objects[1]}')


def crop_box(rng: np.random.Generator, poly, width: int, height: int) -> Tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1) around ``poly``'s box: side 1.2-1.6 x the box's longer side (at most the
    scene's shorter side), centre jittered by up to 10% of the side, shifted to lie inside the scene."""
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    side = max(max(xs) - min(xs), max(ys) - min(ys)) * float(rng.uniform(1.2, 1.6))
    side = int(round(min(side, width, height)))
    cx = (max(xs) + min(xs)) / 2 + float(rng.uniform(-0.1, 0.1)) * side
    cy = (max(ys) + min(ys)) / 2 + float(rng.uniform(-0.1, 0.1)) * side
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, x0 + side, y0 + side


def context_box(rng: np.random.Generator, poly, width: int, height: int, context: float) -> Tuple[int, int, int, int]:
    """A square (x0, y0, x1, y1) ``context`` times the side of :func:`crop_box`'s (1.2-1.6 x the box's longer
    side, at most the scene's shorter side), placed uniformly among the positions that hold the whole box (the
    object anywhere, not centred), shifted to lie inside the scene."""
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    side = max(max(xs) - min(xs), max(ys) - min(ys)) * float(rng.uniform(1.2, 1.6)) * context
    side = int(round(min(side, width, height)))
    x0 = float(rng.uniform(max(xs) - side, min(xs)))
    y0 = float(rng.uniform(max(ys) - side, min(ys)))
    x0 = int(round(min(max(x0, 0), width - side)))
    y0 = int(round(min(max(y0, 0), height - side)))
    return x0, y0, x0 + side, y0 + side


def make_crops(root, num_train: int, num_val: int, size: Tuple[int, int] = (128, 96), seed: int = 0,
               crop_size: int = 64, radius: Tuple[float, float] = RADIUS, objects: Tuple[int, int] = OBJECTS,
               masks: bool = False, context: float = 1.0) -> Path:
    """Every object of ``num_train`` (``num_val``) new scenes cropped into ``root/train/CLASS/`` (``root/
    validation/CLASS/``) as ``crop_size`` px PNGs; returns ``root``. The scenes come from the random
    streams (seed, 1) and (seed, 2), disjoint from :func:`make_shapes`' own (seed). ``root/.complete`` is
    written last.

    With ``masks``, each crop's object mask (its own object only, not the neighbours that show) goes to
    ``root/masks/SPLIT/CLASS/`` under the crop's file name: (crop_size, crop_size) PNG of 0/255, cut and
    resized as the crop (bilinear, then > 50%). It draws no random numbers: the crops are byte-identical
    either way.

    With ``context`` > 1 the crops are wider fields around their objects at the same object scale: scenes
    ``context`` times ``size`` whose radii are ``radius`` / ``context`` of the shorter side (the same shapes in
    pixels), windows of :func:`context_box`, written at ``context`` x ``crop_size`` px."""
    if context < 1:
        raise ValueError(f'crop context must be at least 1 (1: the crops centred on their objects); got {context}')
    width, height = round(size[0] * context), round(size[1] * context)
    if num_train < 1 or num_val < 1:
        raise ValueError(f'need crops of at least one train and one held-out scene; got {num_train} and {num_val}')
    if crop_size < 32:
        raise ValueError(f'crop size must be at least 32 px (ConvMLP needs 32); got {crop_size}')
    _check_layout(radius, objects)
    scene_radius, out_size = (radius[0] / context, radius[1] / context), round(crop_size * context)
    root = Path(root)
    counts = {}
    for stream, (split, count) in enumerate(zip(CROP_SPLITS, (num_train, num_val)), start=1):
        rng = np.random.default_rng([seed, stream])
        index = 0
        per_class = [0] * len(CLASSES)
        for _ in range(count):
            img, _label, instances = make_scene(rng, width, height, scene_radius, objects)
            scene = Image.fromarray(img)
            for kind, poly, mask in instances:
                box = (crop_box(rng, poly, width, height) if context == 1
                       else context_box(rng, poly, width, height, context))
                crop = scene.crop(box).resize((out_size, out_size), Image.BICUBIC)
                _write_image(root / split / CLASSES[kind] / f'{index:06d}.png', np.asarray(crop), 'PNG')
                if masks:
                    cut = Image.fromarray(mask * 255).crop(box).resize((out_size, out_size), Image.BILINEAR)
                    _write_image(root / 'masks' / split / CLASSES[kind] / f'{index:06d}.png',
                                 np.where(np.asarray(cut) > 127, 255, 0).astype(np.uint8), 'PNG')
                index += 1
                per_class[kind] += 1
        missing = [CLASSES[k] for k, n in enumerate(per_class) if n == 0]
        if missing:
            raise ValueError(f'{count} {split} scenes gave no {", ".join(missing)}: generate more scenes')
        counts[split] = per_class
    with atomic_write(root / '.complete', 'w') as f:
        json.dump(dict(classes=list(CLASSES), counts=counts, size=list(size), crop_size=crop_size, seed=seed,
                       masks=masks, context=context), f)
    return root
