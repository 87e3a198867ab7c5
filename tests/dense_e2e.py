"""Helpers of the detection and segmentation tests (tests/test_detection.py, test_segmentation.py,
test_dense_resume.py, test_slurm.py): build models from configs, run the torchrun launchers, parse what they
print, a short Semantic FPN-S run and the bitwise comparison of two runs' checkpoints."""
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# Semantic FPN-S on 64 px shapes: 6 iterations of batch 2, a checkpoint after each, validation after 3
FPN = 'configs/segmentation/shapes/fpn_convmlp_s_shapes.py'
ITERS = 6
SEG = ['train_dataloader.batch_size=2', 'model.data_preprocessor.size=(64,64)',
       'train_dataloader.dataset.pipeline.3.crop_size=(64,64)', f'train_cfg.max_iters={ITERS}',
       'train_cfg.val_interval=3', 'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
       'randomness.seed=5']


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


def fpn_reference_run(root: Path) -> tuple:
    """Semantic FPN-S on 64 px shapes (SEG) through dist_segmentation.sh with 2 CPU processes, never
    interrupted, in ``root``: (its ADE-layout data, its final checkpoint). Behind the session fixture
    ``fpn_reference`` (tests/conftest.py)."""
    from src.studies.shapes import make_shapes
    data = make_shapes(root / 'shapes', num_train=4, num_val=2, size=(64, 64)) / 'ade'
    dist('segmentation', FPN, data, '--work-dir', root / 'ref', '--cfg-options', *SEG,
         'default_hooks.checkpoint.interval=100')
    return data, root / 'ref' / f'iter_{ITERS}.pth'


def metrics(text: str, prefix: str) -> dict:
    """``{name: value}`` of the last ``prefix/name: value`` pairs mmengine printed (e.g. prefix 'coco')."""
    found = {}
    for name, value in re.findall(rf'{prefix}/(\w+): (-?[\d.]+)', text):
        found[name] = float(value)
    return found


def _assert_same(a, b, where=''):
    import torch
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f'{where}[{i}]')
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def assert_bitwise_equal(ref_file, cut_file):
    """Two run checkpoints hold the same weights, optimizer and scheduler states, position, seed and RNG states."""
    import torch
    from src.mm.checkpoints import load_run_checkpoint
    ref, cut = load_run_checkpoint(ref_file), load_run_checkpoint(cut_file)
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        _assert_same(ref[key], cut[key], key)
    for key in ('epoch', 'iter', 'seed', 'rng_states'):
        _assert_same(ref['meta'][key], cut['meta'][key], f'meta.{key}')
    assert any(k.startswith('backbone.') for k in ref['state_dict']) and ref['optimizer']['state']
    # what the file needs to load is mmengine's, numpy's and torch's: no module of this project, so moving
    # src/ modules cannot break a checkpoint written before
    assert not [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(ref_file) if g.startswith('src')]
