"""classification.py in one process: configs, datasets, evaluation, and every bad input (exit code 2)."""
import csv
import functools
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from classification_helpers import ROOT, TINY_MODEL, make_image_folder
from src.train.config import parse_args
from src.train.run import main

CONFIGS = sorted(p for p in (ROOT / 'configs' / 'classification').rglob('*.yml') if '_base_' not in p.parts)


def _main(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


def _tiny(tmp_path, *extra):
    return [*TINY_MODEL, '--epochs', 1, '-b', 4, '-j', 0, '--output', tmp_path / 'out', '--experiment', 'run',
            '--warmup-epochs', 0, '--lr', 1e-3, '--log-interval', 1, *extra]


@functools.lru_cache(maxsize=None)
def _built_model(name):
    """Each architecture built once (L takes seconds); configs then set their class count on it."""
    import src.classification  # noqa: F401
    return timm.create_model(name, pretrained=False)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(ROOT / 'configs' / 'classification')))
def test_config_parses_and_builds(path):
    args, cfg = parse_args(['-c', str(path)])
    assert cfg['model'] == args.model and args.model.startswith('convmlp_')
    model = _built_model(args.model)
    model.reset_classifier(args.num_classes or 1000)
    assert model.num_classes == (args.num_classes or 1000)
    assert model.get_classifier().weight.shape[0] == (args.num_classes or 1000)
    if 'flowers102' in path.name:  # the release's S and M Flowers files named the L model
        assert args.model == path.name.split('_flowers')[0]
        assert (args.batch_size, args.min_lr) == ({'convmlp_s': 96, 'convmlp_m': 96, 'convmlp_l': 64}[args.model], 1e-8)
    if 'imagenet' in path.name:
        assert (args.lr, args.model_ema_decay, args.aa, args.epochs) == (5e-4, 0.99996, 'rand-m9-mstd0.5-inc1', 300)


def test_train_writes_outputs_and_evaluate_reproduces_top1(tmp_path, folder, capsys):
    code, out, err = _main(capsys, folder, *_tiny(tmp_path))
    assert code == 0, err
    run = tmp_path / 'out' / 'run'
    for name in ('args.yaml', 'summary.csv', 'summary.png', 'train.log', 'last.pth.tar', 'best.pth.tar',
                 'checkpoint-1.pth.tar'):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / 'summary.csv')))
    assert [r['epoch'] for r in rows] == ['1'] and set(rows[0]) >= {'train_loss', 'eval_loss', 'top1', 'top5', 'lr'}
    assert 'step 6/6' in (run / 'train.log').read_text()
    code, out, err = _main(capsys, folder, *TINY_MODEL, '--evaluate', '--resume', run / 'last.pth.tar', '-j', 0)
    assert code == 0, err
    top1 = float(re.search(r'top-1 ([\d.]+)', out).group(1))
    assert top1 == pytest.approx(float(rows[0]['top1']), abs=1e-3)


def _fake_cifar10(root: Path, n_train=20, n_test=10):
    d = root / 'cifar-10-batches-py'
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {'data': rng.integers(0, 255, (n, 3072), dtype=np.uint8), 'labels': list(rng.integers(0, 10, n))}
    for i in range(1, 6):
        pickle.dump(batch(n_train // 5), open(d / f'data_batch_{i}', 'wb'))
    pickle.dump(batch(n_test), open(d / 'test_batch', 'wb'))
    pickle.dump({'label_names': [f'class{i}' for i in range(10)]}, open(d / 'batches.meta', 'wb'))


def test_torchvision_dataset_from_local_files(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, 'check_integrity', lambda *a, **k: True)  # hand-made batches have other md5s
    _fake_cifar10(tmp_path / 'cifar')
    code, out, err = _main(capsys, tmp_path / 'cifar', '--dataset', 'tv-cifar10', '--val-split', 'validation',
                           *_tiny(tmp_path), '--amp')  # and bf16 autocast on CPU
    assert code == 0, err
    log = (tmp_path / 'out' / 'run' / 'train.log').read_text()
    assert '10 classes' in log and '20 train / 10 val images' in log


# --- bad input: one clear message, exit code 2 ---------------------------------------------------------


def test_unknown_model_suggests_closest(tmp_path, folder, capsys):
    code, _, err = _main(capsys, folder, '--model', 'convmlp_xs', '--output', tmp_path)
    assert code == 2 and "unknown model 'convmlp_xs'" in err and "did you mean 'convmlp_s'" in err


def test_yaml_unknown_key_names_closest(tmp_path, folder, capsys):
    cfg = tmp_path / 'bad.yml'
    cfg.write_text('model: convmlp_s\nwarmup_lrr: 1.0e-6\n')
    code, _, err = _main(capsys, folder, '-c', cfg)
    assert code == 2 and "unknown key 'warmup_lrr'" in err and "did you mean 'warmup_lr'" in err
    assert 'Traceback' not in err


def test_missing_data_dir(tmp_path, capsys):
    code, _, err = _main(capsys, tmp_path / 'nowhere', *_tiny(tmp_path))
    assert code == 2 and 'does not exist' in err and str(tmp_path / 'nowhere') in err
    assert not (tmp_path / 'out' / 'run' / 'last.pth.tar').exists()


def test_missing_split_folder(tmp_path, capsys):
    (tmp_path / 'data' / 'train' / 'a').mkdir(parents=True)
    code, _, err = _main(capsys, tmp_path / 'data', *_tiny(tmp_path), '--train-split', 'training_set')
    assert code == 2 and "no 'training_set' split folder" in err and 'found: train' in err


def test_empty_dataset_folder(tmp_path, capsys):
    (tmp_path / 'data' / 'train').mkdir(parents=True)
    code, _, err = _main(capsys, tmp_path / 'data', *_tiny(tmp_path))
    assert code == 2 and 'has no class folders' in err


def test_empty_class_folder(tmp_path, capsys):
    data = make_image_folder(tmp_path / 'data', classes=2, train=2, val=1)
    (data / 'train' / 'c9').mkdir()
    code, _, err = _main(capsys, data, *_tiny(tmp_path))
    assert code == 2 and f"class folder {data / 'train' / 'c9'} is empty" in err


def test_corrupt_image_skipped_and_counted(tmp_path, capsys):
    data = make_image_folder(tmp_path / 'data', classes=2, train=4, val=2)
    bad = data / 'train' / 'c0' / '0.png'
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    code, out, err = _main(capsys, data, *_tiny(tmp_path))
    assert code == 0, err
    log = (tmp_path / 'out' / 'run' / 'train.log').read_text()
    assert f'skipping unreadable image {bad}' in log and 'unreadable images skipped 1' in log


def test_corrupt_image_strict_is_an_error(tmp_path, capsys):
    data = make_image_folder(tmp_path / 'data', classes=2, train=4, val=2)
    bad = data / 'validation' / 'c1' / '1.png'
    bad.write_bytes(b'not an image')
    code, _, err = _main(capsys, data, *_tiny(tmp_path), '--strict-images')
    assert code == 2 and f'unreadable image {bad}' in err and 'strict-images' in err


def test_wrong_num_classes(tmp_path, folder, capsys):
    code, _, err = _main(capsys, folder, *_tiny(tmp_path), '--num-classes', 1000)
    assert code == 2 and 'the dataset has 3 classes but --num-classes is 1000' in err


def test_existing_run_is_not_overwritten(tmp_path, folder, capsys):
    run = tmp_path / 'out' / 'run'
    run.mkdir(parents=True)
    (run / 'last.pth.tar').write_bytes(b'precious')
    code, _, err = _main(capsys, folder, *_tiny(tmp_path))
    assert code == 2 and 'already holds checkpoints' in err and '--overwrite' in err
    assert (run / 'last.pth.tar').read_bytes() == b'precious'


def test_truncated_resume_checkpoint_reports_path_and_size(tmp_path, folder, capsys):
    ckpt = tmp_path / 'cut.pth.tar'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = _main(capsys, folder, *_tiny(tmp_path), '--resume', ckpt)
    assert code == 2 and f'cannot read checkpoint {ckpt} (1000 bytes)' in err


def test_unknown_torchvision_dataset(tmp_path, capsys):
    code, _, err = _main(capsys, tmp_path, '--dataset', 'tv-CIFAR11', *_tiny(tmp_path))
    assert code == 2 and "unknown torchvision dataset 'tv-CIFAR11'" in err and "did you mean 'CIFAR10'" in err


def test_bad_malloc_setting_exits_2_before_any_output(tmp_path, folder, capsys, monkeypatch):
    monkeypatch.setenv('CONVMLP_MALLOC', 'tcmalloc')
    code, _, err = _main(capsys, folder, *_tiny(tmp_path))
    assert code == 2 and "CONVMLP_MALLOC='tcmalloc'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()


def test_adamw_runs_fused_and_keeps_the_checkpoint_layout(tmp_path, folder, capsys):
    code, _, err = _main(capsys, folder, *_tiny(tmp_path))
    assert code == 0, err
    state = torch.load(tmp_path / 'out' / 'run' / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert all(group['fused'] for group in state['optimizer']['param_groups'])
    assert {'step', 'exp_avg', 'exp_avg_sq'} <= set(next(iter(state['optimizer']['state'].values())))
