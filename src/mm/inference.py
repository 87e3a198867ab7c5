"""Predictions you can look at: detection and segmentation pictures on top of mmdet's and mmseg's own
inferencers (``mmdet.apis.DetInferencer``, ``mmseg.apis.MMSegInferencer``). Used by ``detection/demo.py``,
``segmentation/demo.py`` (:mod:`src.mm.demo`) and ``tools/transfer.py``.

Checkpoints load through :func:`src.mm.checkpoints.load_checkpoint_for_test` (``weights_only=True``, mmdet
2.x / mmseg 0.x files converted, every key strictly) rather than the inferencers' own lenient loader. Class
names and colours come from the checkpoint's ``dataset_meta``, else from the config's test dataset.
"""
import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..utils.errors import UsageError
from ..utils.images import save_png
from .checkpoints import load_checkpoint_for_test

__all__ = ['dense_inferencer', 'draw_predictions']

SCOPES = {'detection': 'mmdet', 'segmentation': 'mmseg'}


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
    (None: the model's initial weights, backbone init_cfg not applied). Raises :class:`UsageError`."""
    from mmengine.config import Config
    if not os.path.isfile(config):
        raise UsageError(f'config not found: {config}')
    if checkpoint is not None and not os.path.isfile(checkpoint):
        raise UsageError(f'checkpoint not found: {checkpoint}')
    try:
        cfg = Config.fromfile(config)
    except Exception as e:  # noqa: BLE001 - a config that does not parse: one line
        raise UsageError(f'cannot read config {config} ({type(e).__name__}: {str(e).splitlines()[0][:200]})') from None
    scope = cfg.get('default_scope')
    if scope != SCOPES[task]:
        raise UsageError(f'{config} is not a {task} config (default_scope {scope!r}, expected '
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
        meta = load_checkpoint_for_test(checkpoint, inferencer.model, task)  # CheckpointError: a UsageError
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
    """(picture, prediction) per image file (read them with :func:`src.utils.images.read_images` first; an RGB array is
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
