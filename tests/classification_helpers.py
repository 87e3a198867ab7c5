"""Tiny datasets and subprocess helpers for the classification.py tests."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import wait_for_log

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY_MODEL = ['--model', 'test_convnext', '--img-size', '32']  # timm's 0.2M-parameter test model


def make_image_folder(root: Path, classes: int = 3, train: int = 8, val: int = 4, size: int = 32,
                      seed: int = 0) -> Path:
    """root/{train,validation}/cK/*.png: each class a distinct colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for split, n in (('train', train), ('validation', val)):
        for c in range(classes):
            d = root / split / f'c{c}'
            d.mkdir(parents=True, exist_ok=True)
            base = np.zeros(3)
            base[c % 3] = 200
            for i in range(n):
                img = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i}.png')
    return root


def run(args, cwd=ROOT, env=None, timeout=600, script='classification.py'):
    """Run a repo script in a fresh interpreter; returns CompletedProcess (text)."""
    cmd = ([str(ROOT / script)] if script.endswith('.sh') else [PY, str(ROOT / script)]) + [str(a) for a in args]
    e = {**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def start(args, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """classification.py with ``args`` in the background, one thread (tests run two such beside each other)."""
    return subprocess.Popen([PY, str(ROOT / 'classification.py')] + [str(a) for a in args], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)


def updates_done(log_text: str, per_epoch: int) -> int:
    """Optimizer updates a run's train.log has reported, ``per_epoch`` to an epoch."""
    steps = re.findall(r'epoch (\d+)(?:/\d+)? step (\d+)/', log_text)
    return max([(int(e) - 1) * per_epoch + int(s) for e, s in steps] or [0])


def wait_for_updates(proc: subprocess.Popen, log: Path, updates: int, per_epoch: int) -> None:
    """Return once ``proc``'s train.log ``log`` reports ``updates`` updates (or ``proc`` has ended)."""
    wait_for_log(log, lambda text: updates_done(text, per_epoch) >= updates, proc, poll=0.005)


def kill_after(proc: subprocess.Popen, log: Path, updates: int, per_epoch: int) -> None:
    """SIGKILL ``proc`` once its train.log reports ``updates`` updates; it must not have finished by then."""
    wait_for_updates(proc, log, updates, per_epoch)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be killed'


def assert_same_run(ref: Path, run: Path) -> None:
    """Two classification runs (their folders) ended bitwise equal: weights, EMA weights and summary.csv."""
    import torch

    def weights(run_dir):
        ckpt = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=True)
        return {**ckpt['state_dict'], **{f'ema.{k}': v for k, v in ckpt['state_dict_ema'].items()}}
    a, b = weights(ref), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (run / 'summary.csv').read_text() == (ref / 'summary.csv').read_text()
