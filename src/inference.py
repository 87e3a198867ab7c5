"""Predictions you can look at: detection and segmentation pictures on top of mmdet's and mmseg's own
inferencers (``mmdet.apis.DetInferencer``, ``mmseg.apis.MMSegInferencer``), and a classifier's top-5 with
class names. Used by ``detection/demo.py``, ``segmentation/demo.py``, ``tools/predict.py`` and
``tools/transfer.py``.

Checkpoints load through :func:`src.mmrun.load_checkpoint_for_test` (``weights_only=True``, mmdet 2.x /
mmseg 0.x files converted, every key strictly) rather than the inferencers' own lenient loader. Class names
and colours come from the checkpoint's ``dataset_meta``, else from the config's test dataset.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['InputError', 'check_images', 'dense_inferencer', 'draw_predictions', 'class_names', 'top5']

SCOPES = {'detection': 'mmdet', 'segmentation': 'mmseg'}


class InputError(Exception):
    """Bad input (missing or unreadable image, config or checkpoint): one line, the CLI exits with 2."""


def check_images(paths: Sequence[str]) -> List[np.ndarray]:
    """The images as RGB uint8 arrays; :class:`InputError` naming the first missing or unreadable one."""
    from PIL import Image, UnidentifiedImageError
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise InputError(f'image not found: {path}')
        try:
            with Image.open(path) as f:
                images.append(np.asarray(f.convert('RGB')))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise InputError(f'cannot read image {path} ({type(e).__name__}: {e}): give a JPEG/PNG file') from None
    return images


def _dataset_meta(cfg) -> dict:
    """classes / palette of the config's test dataset (its metainfo, else the dataset class's)."""
    from mmengine.registry import DATASETS
    ds = dict(cfg.test_dataloader.dataset)
    meta = dict(ds.get('metainfo') or {})
    if 'classes' not in meta:
        cls = DATASETS.get(ds['type'])
        meta = {**getattr(cls, 'METAINFO', {}), **meta}
    return {k: meta[k] for k in ('classes', 'palette') if k in meta}


def dense_inferencer(task: str, config: str, checkpoint: Optional[str], device: str = 'cpu'):
    """mmdet's DetInferencer / mmseg's MMSegInferencer for ``config`` with ``checkpoint`` loaded strictly
    (None: the model's initial weights, backbone init_cfg not applied). Raises :class:`InputError`."""
    from mmengine.config import Config
    from .mmrun import load_checkpoint_for_test
    from .weights import CheckpointError
    if not os.path.isfile(config):
        raise InputError(f'config not found: {config}')
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise InputError(f'checkpoint not found: {checkpoint}')
    try:
        cfg = Config.fromfile(config)
    except Exception as e:  # noqa: BLE001 - a config that does not parse: one line
        raise InputError(f'cannot read config {config} ({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None
    scope = cfg.get('default_scope')
    if scope != SCOPES[task]:
        raise InputError(f'{config} is not a {task} config (default_scope {scope!r}, expected '
                         f'{SCOPES[task]!r}): give a config from configs/{task}/')
    cfg.model.backbone.init_cfg = None  # the weights come from the checkpoint (no download, no pretraining file)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "weights is None: random init / COCO classes": replaced below
        if task == 'detection':
            from mmdet.apis import DetInferencer
            inferencer = DetInferencer(model=cfg, weights=None, device=device)
        else:
            from mmseg.apis import MMSegInferencer
            inferencer = MMSegInferencer(model=cfg, weights=None, device=device)
    meta = None
    if checkpoint is not None:
        try:
            meta = load_checkpoint_for_test(checkpoint, inferencer.model, task)
        except CheckpointError as e:
            raise InputError(str(e)) from None
    meta = {k: v for k, v in {**_dataset_meta(cfg), **(meta or {})}.items() if k in ('classes', 'palette')}
    if 'classes' in meta:
        meta['classes'] = tuple(meta['classes'])
    inferencer.model.dataset_meta = meta
    inferencer.visualizer.dataset_meta = meta
    if task == 'segmentation':  # MMSegInferencer draws with its own copy of the meta
        inferencer.visualizer.set_dataset_meta(meta.get('classes'), meta.get('palette'))
    inferencer.model.eval()
    return inferencer


def draw_predictions(inferencer, task: str, images: Sequence, score_thr: float = 0.3,
                     opacity: float = 0.6) -> List[Tuple[np.ndarray, object]]:
    """(picture, prediction) per image file (check them with :func:`check_images` first; an RGB array is
    written to a temporary PNG and read as a file): boxes, masks and class names drawn in the class
    colours (detection, boxes scoring at least ``score_thr``; the prediction is mmdet's DetDataSample), or
    the class map over the image (segmentation; the prediction is the (H, W) class-index array). A picture
    is RGB, of the input's size.

    The inferencers get the file names: they then read the image once, feed the model BGR as their
    pipelines expect and draw on the RGB image (given an array, they would draw on the BGR one)."""
    import tempfile
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, image in enumerate(images):
            path = str(save_png(image, Path(tmp) / f'{i}.png') if isinstance(image, np.ndarray) else image)
            out.append(_draw_one(inferencer, task, path, score_thr, opacity))
    return out


def _draw_one(inferencer, task: str, path: str, score_thr: float, opacity: float) -> Tuple[np.ndarray, object]:
    if task == 'detection':
        res = inferencer(path, return_vis=True, no_save_vis=True, pred_score_thr=score_thr, return_datasamples=True)
    else:
        inferencer.visualizer.alpha = opacity
        res = inferencer(path, return_vis=True)
    pred, vis = res['predictions'], res['visualization']
    pred = pred[0] if isinstance(pred, list) else pred  # one input: mmseg returns the item itself
    vis = vis[0] if isinstance(vis, list) else vis
    return np.asarray(vis), pred if task == 'detection' or not isinstance(pred, dict) else pred['sem_seg']


def save_png(picture: np.ndarray, path: Path) -> Path:
    """Write an RGB array as PNG (crash-safe)."""
    import io
    from PIL import Image
    from .atomic import atomic_write
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format='PNG', optimize=True)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path


# ---- classification ------------------------------------------------------------------------------
def class_names(checkpoint_state: Optional[dict], num_classes: int, source: str) -> Tuple[List[str], str]:
    """Names of the ``num_classes`` outputs and where they come from.

    A run of ``classification.py``: its checkpoint's ``classes``, else the class folders of the training
    split its ``args`` name (sorted, as the run indexed them). 1000 outputs otherwise: ImageNet-1k's names
    from timm (``timm.data.ImageNetInfo``). Otherwise ``class 0..N-1``."""
    state = checkpoint_state or {}
    if isinstance(state.get('classes'), (list, tuple)) and len(state['classes']) == num_classes:
        return [str(c) for c in state['classes']], f'the class folders of the run ({source})'
    args = state.get('args') if isinstance(state.get('args'), dict) else None
    if args and args.get('dataset', '') in ('', 'folder', 'imagefolder') and args.get('data_dir'):
        from .train.data import _SPLIT_SYNONYMS
        split = args.get('train_split') or ''
        for name in _SPLIT_SYNONYMS.get(split, (split,)):
            folder = Path(args['data_dir']) / name
            if folder.is_dir():
                names = sorted(d.name for d in folder.iterdir() if d.is_dir())
                if len(names) == num_classes:
                    return names, f'the class folders of {folder}'
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)], 'ImageNet-1k (timm.data.ImageNetInfo)'
    return [f'class {i}' for i in range(num_classes)], 'no names known: indices'


def top5(model, images: Sequence[np.ndarray], data_cfg: dict) -> List[List[Tuple[int, float]]]:
    """Top-5 (class index, probability) of each RGB image, preprocessed as timm's eval transform of
    ``data_cfg`` (input size, crop_pct, interpolation, mean/std)."""
    import torch
    from PIL import Image
    from timm.data import create_transform
    tf = create_transform(**{k: data_cfg[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct')})
    batch = torch.stack([tf(Image.fromarray(img)) for img in images])
    with torch.no_grad():
        prob = model(batch).softmax(-1)
    k = min(5, prob.shape[1])
    values, indices = prob.topk(k, dim=1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
