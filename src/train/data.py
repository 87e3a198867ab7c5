"""Datasets and loaders for training and evaluation.

* ``--dataset ''``/``folder``: ``DATA_DIR/SPLIT/CLASS/*.jpg`` (checked: missing folders and empty class
  folders are errors); ``tv-NAME``: any torchvision dataset (``tv-CIFAR10``, ``tv-Flowers102``...);
  any other name goes to ``timm.data.create_dataset`` (``torch/cifar10``, ``hfds/...``).
* Unreadable images become :class:`Unreadable` markers that the collate function drops; the training loop
  counts and logs them (or stops on the first with ``--strict-images``).
* Exact resume: the order of an epoch is a pure function of (seed, epoch) (:class:`EpochSampler`), and
  each sample's augmentation is drawn from RNGs seeded by (seed, epoch, index) (:class:`SeededSamples`),
  so neither the worker count nor a restart in the middle of an epoch changes what the model sees.
"""
from __future__ import annotations

import inspect
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from ..utils.errors import UsageError
from .config import did_you_mean

__all__ = ['Unreadable', 'ImageFiles', 'SeededSamples', 'EpochSampler', 'split_folders', 'build_dataset',
           'dataset_classes', 'collate_skipping', 'build_loader']

_SPLIT_SYNONYMS = {'train': ('train', 'training'), 'validation': ('validation', 'val', 'valid', 'eval'),
                   'val': ('val', 'validation', 'valid', 'eval'), 'valid': ('valid', 'val', 'validation'),
                   'test': ('test', 'testing')}


def split_folders(split: str) -> Tuple[str, ...]:
    """The folder names a split may have under the data dir, in the order they are looked for."""
    return _SPLIT_SYNONYMS.get(split, (split,))


@dataclass
class Unreadable:
    """Stands in for a sample whose image could not be decoded."""
    path: str
    reason: str


class ImageFiles(Dataset):
    """``(image, target)`` from a list of ``(path, target)``; an unreadable file gives :class:`Unreadable`."""

    def __init__(self, samples: Sequence[Tuple[str, int]], classes: Sequence[str], transform: Callable = None):
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            with Image.open(path) as f:
                img = f.convert('RGB')
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated / non-image files
            return Unreadable(str(path), f'{type(e).__name__}: {e}')
        return (self.transform(img) if self.transform else img), target


def _image_folder(root: Path, split: str, transform: Callable) -> ImageFiles:
    from timm.data.readers.img_extensions import get_img_extensions
    from timm.data.readers.reader_image_folder import find_images_and_targets
    if not root.is_dir():
        raise UsageError(f'data dir {root} does not exist: pass the dataset root (holding the split folders)')
    folder = root
    if split:
        found = [root / s for s in split_folders(split) if (root / s).is_dir()]
        if not found:
            subdirs = sorted(d.name for d in root.iterdir() if d.is_dir())
            raise UsageError(f"no '{split}' split folder in {root} (found: {', '.join(subdirs) or 'nothing'}): "
                             f"pass --train-split/--val-split NAME, or '' for the folder itself")
        folder = found[0]
    exts = get_img_extensions(as_set=True)
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
    if not class_dirs:
        raise UsageError(f'{folder} has no class folders: expected {folder}/CLASS_NAME/IMAGE.jpg')
    for d in class_dirs:
        if not any(os.path.splitext(f)[1].lower() in exts for _, _, files in os.walk(d) for f in files):
            raise UsageError(f'class folder {d} is empty (no {"/".join(sorted(exts))} images): '
                             f'add images or remove the folder')
    class_to_idx = {d.name: i for i, d in enumerate(class_dirs)}
    samples, _ = find_images_and_targets(str(folder), class_to_idx=class_to_idx)
    return ImageFiles(samples, [d.name for d in class_dirs], transform)


def _torchvision(name: str, root: Optional[str], split: str, download: bool, transform: Callable) -> Dataset:
    import torchvision.datasets as tvd
    by_lower = {n.lower(): n for n in tvd.__all__}
    cls_name = by_lower.get(name.lower())
    if cls_name is None:
        raise UsageError(f"unknown torchvision dataset 'tv-{name}'{did_you_mean(name, list(tvd.__all__))}")
    cls = getattr(tvd, cls_name)
    if root is None:
        raise UsageError(f'tv-{name} needs a data dir (where the files are, or go with --download)')
    params = inspect.signature(cls.__init__).parameters
    kwargs = dict(transform=transform)
    if 'download' in params:
        kwargs['download'] = download
    if 'split' in params:
        kwargs['split'] = {'validation': 'val', 'valid': 'val'}.get(split, split)
    elif 'train' in params:
        kwargs['train'] = split in _SPLIT_SYNONYMS['train']
    try:
        return cls(root, **kwargs)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        hint = '' if download else '; pass --download to fetch it'
        raise UsageError(f'cannot load tv-{name} split {split!r} from {root}: {e}{hint}') from None


def build_dataset(name: str, root: Optional[str], split: str, transform: Callable, download: bool = False,
                  is_training: bool = False) -> Dataset:
    """The dataset of ``split`` with ``transform`` applied (see module docstring for the name forms)."""
    if name in ('', 'folder', 'imagefolder'):
        if root is None:
            raise UsageError('no data dir given: classification.py DATA_DIR ... (or --dataset tv-NAME)')
        return _image_folder(Path(root), split, transform)
    if name.startswith('tv-'):
        return _torchvision(name[3:], root, split, download, transform)
    from timm.data import create_dataset
    try:
        ds = create_dataset(name, root=root, split=split, is_training=is_training, download=download)
    except (ValueError, RuntimeError, FileNotFoundError, AssertionError) as e:
        raise UsageError(f'cannot load dataset {name!r} split {split!r} from {root}: {e}') from None
    ds.transform = transform
    return ds


def dataset_classes(ds: Dataset) -> Optional[int]:
    """Number of classes of ``ds`` when it says so (class list or targets), else None."""
    if getattr(ds, 'classes', None):
        return len(ds.classes)
    reader = getattr(ds, 'reader', None)
    if reader is not None and getattr(reader, 'class_to_idx', None):
        return len(reader.class_to_idx)
    for attr in ('targets', '_labels', 'labels'):
        t = getattr(ds, attr, None)
        if t is not None and len(t):
            return int(max(int(x) for x in t)) + 1
    return None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1)[0])


class SeededSamples(Dataset):
    """Wraps a training dataset so sample ``i`` of epoch ``e`` is augmented with RNGs (python, numpy, torch)
    seeded by (seed, e, i); the caller's RNG states are restored afterwards. Set ``epoch`` before each epoch."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = sample_seed(self.seed, self.epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            np.random.seed(s)
            torch.manual_seed(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class EpochSampler(Sampler):
    """This process's indices for one epoch: a permutation drawn from (seed, epoch) (or 0..n-1 unshuffled),
    padded to a multiple of ``num_replicas`` x ``accum_steps`` when ``pad``, minus the first ``skip``.

    Without gradient accumulation, process ``rank`` takes every ``num_replicas``-th index from ``rank`` on.
    With ``accum_steps`` = N > 1, each process stands for N of the processes of a run without accumulation:
    micro-batch m of its update k is batch k of process ``rank * N + m`` of a run with ``num_replicas * N``
    processes. So an update sees the same images, grouped in the same batches (the same BatchNorm
    statistics), as one step of that run: 1 process x batch B x N steps trains like N processes x batch B."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, num_replicas: int = 1,
                 pad: bool = True, accum_steps: int = 1, batch_size: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.num_replicas, self.pad = n, seed, shuffle, rank, num_replicas, pad
        self.accum_steps, self.batch_size = accum_steps, batch_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> List[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        ways = self.num_replicas * self.accum_steps
        if self.pad and self.n % ways:
            order += (order * ways)[:ways - self.n % ways]
        if self.accum_steps == 1:
            return order[self.rank::self.num_replicas][self.skip:]
        streams = [order[v::ways] for v in range(self.rank * self.accum_steps, (self.rank + 1) * self.accum_steps)]
        b = self.batch_size
        mine = [i for k in range(len(streams[0]) // b) for s in streams for i in s[k * b:(k + 1) * b]]
        return mine[self.skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())


def collate_skipping(batch):
    """Default collate of the readable samples; returns ``(images or None, targets or None, unreadable)``."""
    bad = [b for b in batch if isinstance(b, Unreadable)]
    good = [b for b in batch if not isinstance(b, Unreadable)]
    if not good:
        return None, None, bad
    images = torch.stack([g[0] for g in good])
    targets = torch.as_tensor([int(g[1]) for g in good])
    return images, targets, bad


def build_loader(dataset: Dataset, sampler: EpochSampler, batch_size: int, workers: int, drop_last: bool,
                 seed: int) -> DataLoader:
    """A DataLoader over ``sampler`` that never touches the global RNG (it has its own generator)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skipping, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)
