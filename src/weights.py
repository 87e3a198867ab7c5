"""Fetching and loading ConvMLP checkpoints safely.

* Sources: a name from :mod:`src.zoo` (``convmlp_s``, ``convmlp_s_cifar10``...), an ``http(s)://`` or
  ``file://`` URL, or a local path.
* Downloads go to the torch hub cache (``$TORCH_HOME/hub/checkpoints``) through a temporary file that is
  checked (length, optional SHA-256, loadable) before it is renamed into place: a broken download never
  leaves a file in the cache.
* ``.pth``/``.pth.tar`` files are read with ``torch.load(weights_only=True)`` (a pickle that would run code is
  refused), ``.safetensors`` files (recognised by their header, whatever their name) with the
  ``safetensors`` package.
* Checkpoint wrappers (``state_dict``, ``model``, ``state_dict_ema``, ``module.`` prefixes) are unwrapped.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from . import zoo
from .utils.atomic import atomic_write
from .utils.errors import UsageError

__all__ = ['CheckpointError', 'cache_path', 'download', 'fetch', 'load_checkpoint_file', 'load_state_dict',
           'unwrap_state_dict', 'load_pretrained', 'adapt_state_dict', 'adapt_input_channels',
           'state_dict_mismatch']

WRAPPER_KEYS = ('state_dict', 'model', 'state_dict_ema', 'model_ema', 'module')


class CheckpointError(UsageError, RuntimeError):
    """A checkpoint could not be fetched or read; the message says where, why and what to do. A
    :class:`~src.utils.errors.UsageError`: a command reports it as one line and exits with code 2."""


def cache_path(url: str) -> Path:
    """Where ``url`` is cached: ``<torch hub dir>/checkpoints/<file name>``."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or 'checkpoint.pth'
    return Path(torch.hub.get_dir()) / 'checkpoints' / name


def _is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ('http', 'https', 'file', 'ftp')


def download(url: str, progress: bool = False, sha256: Optional[str] = None, timeout: float = 60.) -> Path:
    """Download ``url`` into the hub cache (once) and return the cached path.

    The body goes to a temporary file next to the target (:func:`atomic_write`); it is renamed into place
    only after its length matches Content-Length, its SHA-256 matches ``sha256`` (if given) and it loads as a checkpoint.
    Raises :class:`CheckpointError` naming the URL, the cache path and the cause.
    """
    dst = cache_path(url)
    if dst.is_file():
        return dst
    try:
        with atomic_write(dst) as f:
            _fetch(url, f, progress, timeout)
            f.flush()
            if sha256 is not None:
                digest = _sha256(f.name)
                if digest != sha256.lower():
                    raise CheckpointError(f'SHA-256 mismatch: expected {sha256}, got {digest}')
            load_checkpoint_file(f.name)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        cause = e.args[0] if isinstance(e, CheckpointError) else f'{type(e).__name__}: {e}'
        raise CheckpointError(
            f'could not fetch ConvMLP weights from {url} ({cause}); download the file by hand to {dst}, or '
            f'set {zoo.BASE_ENV} to a mirror or local folder, or pass a local path') from e
    return dst


def _fetch(url: str, f, progress: bool, timeout: float) -> None:
    req = urllib.request.Request(url, headers={'User-Agent': 'convmlp'})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        total = r.headers.get('Content-Length')
        total = int(total) if total is not None else None
        done = 0
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            f.write(chunk)
            done += len(chunk)
            if progress:
                _report(done, total)
        if progress:
            sys.stderr.write('\n')
    if total is not None and done != total:
        raise CheckpointError(f'connection closed after {done} of {total} bytes')


def _report(done: int, total: Optional[int]) -> None:
    mb = done / 2 ** 20
    if total:
        pct = 100 * done / total
        bar = '#' * int(pct / 4)
        sys.stderr.write(f'\r  [{bar:<25}] {pct:5.1f}% {mb:.1f}/{total / 2 ** 20:.1f} MiB')
    else:
        sys.stderr.write(f'\r  {mb:.1f} MiB')
    sys.stderr.flush()


def _sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def load_checkpoint_file(path: Union[str, Path]) -> dict:
    """The dict in a checkpoint file, on CPU: ``torch.load(path, weights_only=True)``, or the tensors of a
    safetensors file; errors say what was wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    if _is_safetensors(path):
        return _load_safetensors(path)
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - every load failure becomes one clear message
        size = path.stat().st_size
        glob = re.search(r'GLOBAL (\S+)', str(e))
        if glob:
            why = (f'it would call {glob.group(1)} when unpickled (Python objects, not tensors); refused '
                   f'with weights_only=True and nothing was run. Re-save it as a plain state_dict if you trust it')
        else:
            why = f'truncated or not a PyTorch checkpoint ({_first_line(e)})'
        raise CheckpointError(f'cannot read checkpoint {path} ({size} bytes): {why}') from None
    if not isinstance(obj, dict):
        raise CheckpointError(f'checkpoint {path} holds a {type(obj).__name__}, not a state dict')
    return obj


def _is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or a safetensors header (8-byte length, then ``{``; torch files start with a
    zip or pickle header): downloads are checked under a temporary name."""
    if path.suffix == '.safetensors':
        return True
    with open(path, 'rb') as f:
        return f.read(9)[8:] == b'{'


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f'{path} is a safetensors file: pip install safetensors to read it') from None
    try:
        return load_file(str(path), device='cpu')
    except Exception as e:  # noqa: BLE001 - SafetensorError and friends: one clear message
        raise CheckpointError(f'cannot read checkpoint {path} ({path.stat().st_size} bytes): truncated or not '
                              f'a safetensors file ({_first_line(e)})') from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if ln.startswith(('Unsupported', 'invalid load key'))), lines[0] if lines else '')
    return f'{type(e).__name__}: {detail[:160]}'


def unwrap_state_dict(obj: dict, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Peel training wrappers off a checkpoint: ``{'state_dict'|'model'|'state_dict_ema': sd}`` and
    ``module.`` prefixes (DataParallel/DDP). ``use_ema`` prefers the EMA weights when both are present."""
    order = ('state_dict_ema', 'model_ema') + WRAPPER_KEYS if use_ema else WRAPPER_KEYS
    while True:
        key = next((k for k in order if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    sd = {}
    for k, v in obj.items():
        if not torch.is_tensor(v):
            continue
        while k.startswith('module.'):
            k = k[len('module.'):]
        sd[k] = v
    if not sd:
        raise CheckpointError('checkpoint holds no tensors: not a model state dict')
    return sd


def fetch(source: Union[str, Path], progress: bool = False, sha256: Optional[str] = None) -> Path:
    """Local file of a checkpoint given as a zoo name, a URL (downloaded once, see :func:`download`) or a
    path. Raises :class:`CheckpointError` for a missing file, ``KeyError`` (closest name) for an unknown name."""
    source = str(source)
    if not _is_url(source) and not os.path.exists(source):
        if source in zoo.weight_names():
            sha256 = sha256 or zoo.SHA256.get(source)
            source = zoo.weight_url(source)
        elif os.sep in source or source.endswith(('.pth', '.pt', '.tar', '.bin', '.safetensors')):
            raise CheckpointError(f'checkpoint not found: {source}')
        else:
            zoo.weight_url(source)  # raises KeyError with the closest known name
    if source.startswith('file://'):
        source = urllib.request.url2pathname(urllib.parse.urlparse(source).path)
    return download(source, progress=progress, sha256=sha256) if _is_url(source) else Path(source)


def load_state_dict(source: Union[str, Path], progress: bool = False, use_ema: bool = False,
                    sha256: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """State dict from a zoo name, a URL or a local path (see module docstring)."""
    return unwrap_state_dict(load_checkpoint_file(fetch(source, progress, sha256)), use_ema=use_ema)


def adapt_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Fit a ConvMLP checkpoint to ``model``: drop ``norm``/``head`` for a model without classifier head,
    and drop a head whose class count differs (warning) so it stays freshly initialised."""
    own = model.state_dict()
    sd = dict(state_dict)
    for k in [k for k in sd if k.split('.')[0] in ('norm', 'head')]:
        if k not in own:
            del sd[k]
    head = [k for k in sd if k.startswith('head.')]
    if head and any(sd[k].shape != own[k].shape for k in head):
        warnings.warn(f'checkpoint head has {sd["head.weight"].shape[0]} classes, the model '
                      f'{own["head.weight"].shape[0]}: head left freshly initialised, the rest loaded')
        for k in head:
            del sd[k]
    return sd


def state_dict_mismatch(own: Dict[str, torch.Tensor], sd: Dict[str, torch.Tensor],
                        optional: Tuple[str, ...] = ()) -> str:
    """'' if ``sd`` holds every key of ``own`` (except those starting with ``optional``) with its shape
    and nothing else; otherwise a one-line summary of the missing, unexpected and misshapen keys."""
    missing = [k for k in own if k not in sd and not k.startswith(optional)]
    unexpected = [k for k in sd if k not in own]
    wrong = [f'{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
             if k in sd and sd[k].shape != v.shape]
    if not (missing or unexpected or wrong):
        return ''
    return (f'{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, '
            f'{len(wrong)} of other shape {wrong[:3]}')


def adapt_input_channels(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Fit the first conv of an RGB checkpoint to a model built with another ``in_chans`` (grayscale,
    multispectral) with timm's own ``adapt_input_conv`` (summed for 1 channel, tiled and rescaled for more);
    unchanged when the channel counts agree. timm's ``create_model`` does the same itself."""
    first_conv = getattr(getattr(model, 'tokenizer', None), 'first_conv', None)
    if first_conv is None:
        return state_dict
    key = next(name for name, m in model.named_modules() if m is first_conv) + '.weight'
    weight = state_dict.get(key)
    if weight is None or weight.shape[1] == first_conv.in_channels:
        return state_dict
    from timm.models import adapt_input_conv  # only for a model whose input channels differ
    return {**state_dict, key: adapt_input_conv(first_conv.in_channels, weight)}


def load_pretrained(model: nn.Module, source: Union[str, Path], progress: bool = False,
                    use_ema: bool = False) -> None:
    """Load a checkpoint into a ConvMLP: every key must match, except a head dropped by
    :func:`adapt_state_dict`; a 3-channel first conv is fitted to the model's ``in_chans`` by
    :func:`adapt_input_channels`."""
    sd = adapt_input_channels(model, adapt_state_dict(model, load_state_dict(source, progress=progress,
                                                                             use_ema=use_ema)))
    own = model.state_dict()
    problem = state_dict_mismatch(own, sd, optional=('head.',))
    if problem:
        raise CheckpointError(f'checkpoint {source} does not fit this model (is it a ConvMLP of this size?): '
                              f'{problem}')
    model.load_state_dict(sd, strict='head.weight' in sd or 'head.weight' not in own)
