"""Helpers of tests/test_detection.py and tests/test_segmentation.py: build models from configs, run
the torchrun launchers, parse what they print."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def build_model(config: str, scope: str, init_cfg=None, **cfg_options):
    """Model of ``config`` (path relative to the repo root), the backbone's init_cfg replaced by
    ``init_cfg`` (default: random init)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(ROOT / config))
    cfg.merge_from_dict(cfg_options)
    cfg.model.backbone.init_cfg = init_cfg
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return registry.build(cfg.model)


def build_optimizer(config: str, model):
    """The optimizer ``config``'s optim_wrapper builds for ``model``."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    return build_optim_wrapper(model, Config.fromfile(str(ROOT / config)).optim_wrapper).optimizer


def count_params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(cmd, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repo root (a CPU-only, 1-thread-per-process environment); output in .out."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', MASTER_PORT=str(free_port()),
                    PYTHON=PY, **env)
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    proc.out = proc.stdout + proc.stderr
    return proc


def dist(task: str, config: str, data_root, *args, **env) -> subprocess.CompletedProcess:
    """``dist_{task}.sh config 2 data_root args...``; fails the test with the output if it fails."""
    proc = run(['bash', ROOT / f'dist_{task}.sh', config, 2, data_root, *args], **env)
    assert proc.returncode == 0, proc.out[-6000:]
    return proc


def metrics(text: str, prefix: str) -> dict:
    """``{name: value}`` of the last ``prefix/name: value`` pairs mmengine printed (e.g. prefix 'coco')."""
    found = {}
    for name, value in re.findall(rf'{prefix}/(\w+): (-?[\d.]+)', text):
        found[name] = float(value)
    return found
