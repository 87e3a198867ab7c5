"""dist_classification.sh: a 2-process torchrun run on CPU (gloo), evaluate; launcher input checks."""
import csv
import os
import re
import subprocess

import pytest

from classification_helpers import make_image_folder, run
from helpers import free_port


@pytest.mark.slow
def test_torchrun_two_processes_train_and_evaluate(tmp_path):
    """2 processes through dist_classification.sh: the run's files, 2 epochs, and the evaluation of its
    checkpoint in 1 process giving the top-1 the run logged. (Two processes resuming through the same
    launcher: test_preemption.py, test_slurm.py.)"""
    data = make_image_folder(tmp_path / 'data', classes=3, train=8, val=4)
    common = [data, '--model', 'convmlp_s', '--img-size', 32, '-b', 4, '-j', 0, '--output', tmp_path / 'out',
              '--experiment', 'ddp', '--lr', 1e-3, '--warmup-epochs', 0, '--log-interval', 1]
    env = dict(MASTER_PORT=str(free_port()), OMP_NUM_THREADS='1')
    first = run(['2', *common, '--epochs', 2], env=env, script='dist_classification.sh')
    assert first.returncode == 0, first.stderr[-3000:]
    rundir = tmp_path / 'out' / 'ddp'
    for name in ('args.yaml', 'summary.csv', 'summary.png', 'train.log', 'last.pth.tar', 'best.pth.tar',
                 'checkpoint-1.pth.tar', 'checkpoint-2.pth.tar'):
        assert (rundir / name).is_file(), name
    log = (rundir / 'train.log').read_text()
    assert '2 process(es)' in log and 'step 3/3' in log  # 24 images / 2 processes / batch 4
    rows = list(csv.DictReader(open(rundir / 'summary.csv')))
    assert [r['epoch'] for r in rows] == ['1', '2']

    ev = run([data, '--model', 'convmlp_s', '--img-size', 32, '-j', 0, '--evaluate', '--resume',
              rundir / 'last.pth.tar'])
    assert ev.returncode == 0, ev.stderr
    top1 = float(re.search(r'top-1 ([\d.]+)', ev.stdout).group(1))
    assert top1 == pytest.approx(float(rows[-1]['top1']), abs=1e-3)


def test_launcher_refuses_more_processes_than_cores(tmp_path):
    res = run([str(os.cpu_count() + 1), tmp_path], script='dist_classification.sh')
    assert res.returncode == 2 and 'CPU cores' in res.stderr and 'CONVMLP_ALLOW_OVERSUBSCRIBE' in res.stderr


def test_launcher_fits_threads_to_cores(tmp_path):
    """NUM_PROC x OMP_NUM_THREADS above the node's cores: one warning line, and torchrun gets cores / NUM_PROC
    threads per process unless CONVMLP_ALLOW_OVERSUBSCRIBE=1 (a fake python prints what torchrun would get)."""
    fake = tmp_path / 'python'
    fake.write_text('#!/bin/sh\necho "threads=$OMP_NUM_THREADS"\n')
    fake.chmod(0o755)
    cores = int(subprocess.run(['env', '-u', 'OMP_NUM_THREADS', 'nproc'], capture_output=True, text=True).stdout)
    env = dict(PYTHON=str(fake), OMP_NUM_THREADS=str(cores + 1))
    res = run(['1', tmp_path], env=env, script='dist_classification.sh')
    assert res.returncode == 0 and res.stdout == f'threads={cores}\n'
    assert res.stderr == (f"warning: 1 process(es) x OMP_NUM_THREADS={cores + 1} threads oversubscribe this node's "
                          f'{cores} cores (steps can run 10x slower): using OMP_NUM_THREADS={cores}; set '
                          f'CONVMLP_ALLOW_OVERSUBSCRIBE=1 to keep {cores + 1}\n')
    kept = run(['1', tmp_path], env=dict(env, CONVMLP_ALLOW_OVERSUBSCRIBE='1'), script='dist_classification.sh')
    assert kept.stdout == f'threads={cores + 1}\n' and kept.stderr == ''
    fits = run(['1', tmp_path], env=dict(env, OMP_NUM_THREADS=str(cores)), script='dist_classification.sh')
    assert fits.stdout == f'threads={cores}\n' and fits.stderr == ''
    bad = run(['1', tmp_path], env=dict(env, OMP_NUM_THREADS='two'), script='dist_classification.sh')
    assert bad.returncode == 2 and "OMP_NUM_THREADS must be a positive whole number, got 'two'" in bad.stderr


@pytest.mark.parametrize('args,message', [(['two'], 'NUM_PROC must be a positive whole number'),
                                          (['1', '-c', 'no/such.yml'], "config file not found: 'no/such.yml'")])
def test_launcher_usage_errors(args, message):
    res = run(args, script='dist_classification.sh')
    assert res.returncode == 2 and res.stderr.startswith('usage:') and message in res.stderr
    assert 'Traceback' not in res.stderr
