"""Image files in and out: reading the user's images (one clear error for a missing or unreadable file)
and writing PNGs crash-safe."""
import io
import os
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np

from .atomic import atomic_write
from .errors import UsageError

__all__ = ['read_images', 'save_png']


def read_images(paths: Sequence[Union[str, Path]]) -> List[np.ndarray]:
    """The images as RGB uint8 arrays (H, W, 3); :class:`UsageError` naming the first missing or unreadable one."""
    from PIL import Image, UnidentifiedImageError
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise UsageError(f'image not found: {path}')
        try:
            with Image.open(path) as f:
                images.append(np.asarray(f.convert('RGB')))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise UsageError(f'cannot read image {path} ({type(e).__name__}: {e}): give a JPEG/PNG file') from None
    return images


def save_png(picture: np.ndarray, path: Union[str, Path]) -> Path:
    """Write an RGB (or grey) uint8 array as PNG, crash-safe; returns the path."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format='PNG', optimize=True)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)
