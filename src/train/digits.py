"""scikit-learn's handwritten digits (1797 8x8 grey images, 10 classes) as an ImageFolder on disk:
``ROOT/{train,validation}/{0..9}/NNNN.png``, RGB, upscaled to ``size`` px. A fixed, class-stratified
held-out split. The images go to a temporary sibling folder that is flushed to disk and renamed to
``root`` when complete, so an interrupted export leaves nothing that looks usable."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from ..utils.atomic import atomic_write
from ..utils.errors import UsageError

__all__ = ['write_digits_imagefolder']

_DONE = '.complete'


def write_digits_imagefolder(root: Union[str, Path], size: int = 32, val_fraction: float = 0.2,
                             seed: int = 0) -> Path:
    """Write the split once (skipped when ``root`` already holds a complete one); returns ``root``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    root = Path(root)
    stamp = f'size={size} val_fraction={val_fraction} seed={seed}\n'
    if (root / _DONE).is_file() and (root / _DONE).read_text() == stamp:
        return root
    if root.exists() and any(root.iterdir()):
        raise UsageError(f'{root} exists and is not a digits export with these settings ({stamp.strip()}): '
                         f'remove it or choose another folder')
    digits = load_digits()
    idx = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=digits.target)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.', dir=root.parent))
    try:
        for split, indices in (('train', train_idx), ('validation', val_idx)):
            for i in indices:
                grey = (digits.images[i] * (255. / 16.)).clip(0, 255).astype(np.uint8)  # values are 0..16
                img = Image.fromarray(grey, 'L').resize((size, size), Image.BICUBIC).convert('RGB')
                (tmp / split / str(digits.target[i])).mkdir(parents=True, exist_ok=True)
                img.save(tmp / split / str(digits.target[i]) / f'{i:04d}.png', format='PNG')
        with atomic_write(tmp / _DONE, 'w') as f:
            f.write(stamp)
        os.sync()
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
