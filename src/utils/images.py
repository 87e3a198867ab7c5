"""Image files in and out: finding the images of a folder, reading the user's images (one clear error for a
missing folder, an empty one, a missing or unreadable file) and writing PNGs crash-safe."""
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np

from .atomic import atomic_write
from .errors import UsageError

__all__ = ['IMAGE_SUFFIXES', 'FolderImages', 'image_files', 'list_image_folder', 'read_images', 'save_png']

IMAGE_SUFFIXES = frozenset(['.bmp', '.gif', '.jpeg', '.jpg', '.png', '.ppm', '.tif', '.tiff', '.webp'])


@dataclass
class FolderImages:
    """The images of a folder: ``paths`` (sorted), and for each the index into ``classes`` of the class
    sub-folder it lies in (``labels``; -1 for an image directly in the folder). ``classes``: the names of the
    sub-folders holding images, sorted (an ImageFolder's class order)."""
    paths: List[Path]
    labels: List[int]
    classes: List[str]


def image_files(folder: Union[str, Path]) -> List[Path]:
    """Every image file (by suffix) in ``folder`` and below it, sorted."""
    return sorted(p for p in Path(folder).rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_image_folder(folder: Union[str, Path]) -> FolderImages:
    """Every image file (by suffix) of ``folder``: directly in it, or in its class sub-folders at any depth
    (an ImageFolder's ``CLASS/IMAGE.png``). :class:`UsageError` for a missing folder or one without images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f'image folder not found: {folder}')
    by_class = {d.name: image_files(d) for d in folder.iterdir() if d.is_dir()}
    classes = sorted(name for name, files in by_class.items() if files)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    labels = [-1] * len(paths)
    for index, name in enumerate(classes):
        paths += by_class[name]
        labels += [index] * len(by_class[name])
    if not paths:
        raise UsageError(f'no images in {folder} (looked for {"/".join(sorted(IMAGE_SUFFIXES))} files in it '
                         f'and in its class sub-folders)')
    return FolderImages(paths, labels, classes)


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
