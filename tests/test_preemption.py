"""Preemption (issue 23): SIGTERM or SIGUSR1 makes a run finish its step, agree across processes, save one
checkpoint and exit with code 75; the same command with --resume auto ends bit for bit as the run never
interrupted."""
import os
import re
import signal
import subprocess

import pytest
import torch

from classification_helpers import (PY, ROOT, TINY_MODEL, assert_same_run, make_image_folder, run, updates_done,
                                    wait_for_updates)
from helpers import free_port, wait_for_log
from src.utils.preemption import EXIT_PREEMPTED

STEPS = 3  # 3 classes x 8 images / 2 processes / batch 4


def _args(data, out, experiment, epochs=3):
    return [data, *TINY_MODEL, '--epochs', epochs, '-b', 4, '-j', 0, '--output', out, '--experiment', experiment,
            '--lr', 1e-3, '--warmup-epochs', 1, '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', 0.25, '--mixup', 0.8,
            '--cutmix', 1.0, '--drop-path', 0.1, '--model-ema', '--model-ema-decay', 0.9, '--seed', 5,
            '--log-interval', 1]


def _launch(args, env):
    return subprocess.Popen([str(ROOT / 'dist_classification.sh'), '2', *map(str, args)], cwd=ROOT,
                            env={**os.environ, 'OMP_NUM_THREADS': '1', **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
def test_sigterm_to_a_two_process_run_saves_within_a_step_and_resumes_bitwise(tmp_path):
    data = make_image_folder(tmp_path / 'data')
    out = tmp_path / 'out'
    ref = _launch(_args(data, out, 'ref'), dict(MASTER_PORT=str(free_port())))  # beside the interrupted run

    log = out / 'cut' / 'train.log'
    proc = _launch(_args(data, out, 'cut'), dict(MASTER_PORT=str(free_port())))
    wait_for_updates(proc, log, STEPS + 1, STEPS)
    seen = updates_done(log.read_text(), STEPS)
    os.killpg(proc.pid, signal.SIGTERM)  # as Slurm, a spot reclaim or `kill -TERM -PGID` do: every process
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    saved = torch.load(out / 'cut' / 'recovery.pth.tar', map_location='cpu', weights_only=True)['position']
    done = saved['epoch'] * STEPS + saved['step']
    assert seen <= done <= seen + 2  # the update under way when the signal came, at most one more
    text = log.read_text()
    assert re.search(r'stopped by SIGTERM at epoch \d step \d/3: saved .*recovery.pth.tar; run the same command '
                     r'with --resume auto to go on \(exit code 75\)', text), text[-2000:]

    again = run(['2', *_args(data, out, 'cut'), '--resume', 'auto'], env=dict(MASTER_PORT=str(free_port())),
                script='dist_classification.sh')
    assert again.returncode == 0, again.stderr[-3000:]
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err[-3000:]
    assert_same_run(out / 'ref', out / 'cut')


def test_sigusr1_to_one_process_stops_it_with_its_checkpoint(tmp_path):
    data = make_image_folder(tmp_path / 'data')
    out = tmp_path / 'out'
    log = out / 'one' / 'train.log'
    proc = subprocess.Popen([PY, str(ROOT / 'classification.py'), *map(str, _args(data, out, 'one', epochs=50))],
                            cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_log(log, lambda text: 'step 2/' in text, proc, poll=0.005)
    proc.send_signal(signal.SIGUSR1)  # Slurm's --signal=USR1@T warning before the time limit
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert 'stopped by SIGUSR1' in log.read_text()
    assert (out / 'one' / 'recovery.pth.tar').is_file()
