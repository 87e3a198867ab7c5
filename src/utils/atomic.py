"""Crash-safe file writes: write a temporary file beside the target, flush and fsync, then rename.

A crash at any point leaves either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

__all__ = ['atomic_write', 'atomic_save']


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], mode: str = 'wb') -> Iterator[IO]:
    """``with atomic_write(p) as f: f.write(...)``: ``p`` appears only if the block completes.

    On an exception the temporary file is removed and the previous ``p`` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _mode_for(path))
        with open(tmp, mode) as f:  # by name, so f.name is the temporary path
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _mode_for(path: Path) -> int:
    """Permissions the file would get from a plain open(): the old file's, else 0o666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_save(obj, path: Union[str, Path]) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    import torch
    with atomic_write(path) as f:
        torch.save(obj, f)
