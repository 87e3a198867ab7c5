"""Exact resume: SIGKILL at a random step, a torn newest checkpoint, then ``--resume auto`` ends with the
same weights (bitwise) and the same summary.csv as the run never interrupted."""
import os
import random
import subprocess

import pytest
import torch

from classification_helpers import TINY_MODEL, assert_same_run, kill_after, make_image_folder, run, start

STEPS = 6  # 3 classes x 8 images / batch 4
EPOCHS = 3


def _args(data, out, experiment):
    # every source of randomness on: augmentation, mixup/cutmix, random erasing, drop path, EMA
    return [data, *TINY_MODEL, '--epochs', EPOCHS, '-b', 4, '-j', 0, '--output', out, '--experiment', experiment,
            '--lr', 1e-3, '--warmup-epochs', 1, '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', 0.25, '--mixup', 0.8,
            '--cutmix', 1.0, '--drop-path', 0.1, '--model-ema', '--model-ema-decay', 0.9, '--seed', 3,
            '--checkpoint-interval', 2, '--log-interval', 1]


@pytest.mark.slow
def test_sigkill_and_torn_checkpoint_resume_bitwise(tmp_path):
    data = make_image_folder(tmp_path / 'data')
    out = tmp_path / 'out'
    ref = start(_args(data, out, 'ref'), stderr=subprocess.PIPE)  # beside the interrupted run: one core each
    log = out / 'cut' / 'train.log'
    kill_after(start(_args(data, out, 'cut')), log, random.Random().randint(STEPS + 3, EPOCHS * STEPS - 2),
               STEPS)  # after a recovery save of epoch 2+

    # a crash in the middle of writing the newest checkpoint, as if atomic writes did not exist
    newest = out / 'cut' / 'last.pth.tar'
    size = newest.stat().st_size // 2
    os.truncate(newest, size)
    resumed = run(_args(data, out, 'cut') + ['--resume', 'auto'])
    assert resumed.returncode == 0, resumed.stderr
    text = log.read_text()
    assert f'resume: skipping cannot read checkpoint {newest} ({size} bytes)' in text
    assert 'resuming from' in text
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]

    # tensors and plain values only (weights_only=True loads it, nothing of src/ is named in it): moving
    # src/ modules cannot break a checkpoint written before
    assert torch.serialization.get_unsafe_globals_in_checkpoint(out / 'ref' / 'last.pth.tar') == []
    assert_same_run(out / 'ref', out / 'cut')
    assert len((out / 'cut' / 'summary.csv').read_text().splitlines()) == EPOCHS + 1
