"""Crash-safe writes: the target is either the old file or the complete new one."""
import os

import pytest
import torch

from src.utils.atomic import atomic_save, atomic_write


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'ckpt.pth'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b'new, half written')
            raise RuntimeError('crash')
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['ckpt.pth']


def test_atomic_save_round_trip_and_permissions(tmp_path):
    path = tmp_path / 'sub' / 'w.pth'
    atomic_save({'w': torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.arange(3))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it
    path.chmod(0o600)
    atomic_save({}, path)
    assert path.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode
