"""Tiny datasets and subprocess helpers for the classification.py tests."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

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
