"""Gradient accumulation (issue 23): an update of N micro-batches sees the images, in the same batches, that
one step of a run with N times the processes sees; 1 process x batch 4 x 2 steps trains like 2 processes x
batch 4; and a run killed inside an accumulation window resumes bit for bit."""
import csv
import random
import subprocess

import pytest
import torch

from classification_helpers import TINY_MODEL, assert_same_run, kill_after, make_image_folder, run, start
from helpers import free_port
from src.train.data import EpochSampler
from src.train.digits import write_digits_imagefolder


@pytest.mark.parametrize('n', [24, 25, 37, 1437])
@pytest.mark.parametrize('world,accum', [(1, 2), (2, 2), (1, 4)])
def test_an_update_sees_the_batches_of_one_step_of_more_processes(n, world, accum):
    batch = 4
    wide = [EpochSampler(n, seed=7, rank=r, num_replicas=world * accum) for r in range(world * accum)]
    for s in wide:
        s.set_epoch(3)
    steps = min(len(s) for s in wide) // batch
    for rank in range(world):
        sampler = EpochSampler(n, seed=7, rank=rank, num_replicas=world, accum_steps=accum, batch_size=batch)
        sampler.set_epoch(3)
        mine = sampler.indices()
        assert len(mine) == steps * accum * batch  # whole updates only
        for k in range(steps):
            for m in range(accum):
                want = wide[rank * accum + m].indices()[k * batch:(k + 1) * batch]
                assert mine[(k * accum + m) * batch:(k * accum + m + 1) * batch] == want
        sampler.set_epoch(3, skip=3 * accum * batch)  # resuming after 3 updates
        assert sampler.indices() == mine[3 * accum * batch:]


def test_without_accumulation_the_order_is_unchanged():
    """accum_steps=1 keeps the sampler's order of before (a seed still gives the same run)."""
    for n, world in ((25, 1), (25, 2), (1437, 2)):
        for rank in range(world):
            s = EpochSampler(n, seed=3, rank=rank, num_replicas=world)
            s.set_epoch(1)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(4)).tolist()
            if n % world:
                order += order[:world - n % world]
            assert s.indices() == order[rank::world]


def _digits(root, per_class):
    """The digits ImageFolder, cut to ``per_class`` training images of each class (all held-out images)."""
    full = write_digits_imagefolder(root / 'full')
    for d in (full / 'train').iterdir():
        for f in sorted(d.iterdir())[per_class:]:
            f.unlink()
    return full


def _params(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return ckpt['state_dict']


@pytest.mark.slow
def test_one_process_accumulating_trains_like_two_processes(tmp_path):
    data = _digits(tmp_path, per_class=10)  # 100 images: 12 updates of 8
    common = [data, '--model', 'convmlp_s', '--img-size', 32, '-b', 4, '-j', 0, '--epochs', 1, '--drop-path', 0,
              '--mixup', 0, '--cutmix', 0, '--lr', 1e-3, '--warmup-epochs', 0, '--log-interval', 1,
              '--output', tmp_path / 'out']
    one = start([*common, '--experiment', 'accum', '--grad-accum-steps', 2], stderr=subprocess.PIPE)  # beside
    two = run(['2', *common, '--experiment', 'ddp'], env=dict(MASTER_PORT=str(free_port())),
              script='dist_classification.sh')
    assert two.returncode == 0, two.stderr[-3000:]
    _, err = one.communicate(timeout=600)
    assert one.returncode == 0, err[-3000:]
    logs = {name: (tmp_path / 'out' / name / 'train.log').read_text() for name in ('accum', 'ddp')}
    assert 'global batch 8 = 1 process(es) x batch 4 x 2 accumulation step(s)' in logs['accum']
    assert 'global batch 8 = 2 process(es) x batch 4 x 1 accumulation step(s)' in logs['ddp']
    for text in logs.values():
        assert 'step 12/12' in text and 'step 13/' not in text
    rows = {name: next(csv.DictReader(open(tmp_path / 'out' / name / 'summary.csv'))) for name in logs}
    assert float(rows['accum']['train_loss']) == pytest.approx(float(rows['ddp']['train_loss']), abs=1e-5)
    a, b = _params(tmp_path / 'out/accum/last.pth.tar'), _params(tmp_path / 'out/ddp/last.pth.tar')
    params = [k for k in a if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


STEPS = 3  # updates per epoch: 3 classes x 8 images / (batch 4 x 2)


def _args(data, out, experiment):
    return [data, *TINY_MODEL, '--epochs', 3, '-b', 4, '--grad-accum-steps', 2, '-j', 0, '--output', out,
            '--experiment', experiment, '--lr', 1e-3, '--warmup-epochs', 1, '--aa', 'rand-m9-mstd0.5-inc1',
            '--reprob', 0.25, '--mixup', 0.8, '--cutmix', 1.0, '--drop-path', 0.1, '--model-ema',
            '--model-ema-decay', 0.9, '--seed', 3, '--checkpoint-interval', 1, '--log-interval', 1]


@pytest.mark.slow
def test_accumulating_run_killed_inside_a_window_resumes_bitwise(tmp_path):
    data = make_image_folder(tmp_path / 'data')
    out = tmp_path / 'out'
    ref = start(_args(data, out, 'ref'), stderr=subprocess.PIPE)  # beside the interrupted run: one core each
    # killed as soon as the update is logged: the next update's first micro-batch is under way, inside a window
    kill_after(start(_args(data, out, 'cut')), out / 'cut' / 'train.log',
               random.Random().randint(STEPS + 1, 3 * STEPS - 1), STEPS)
    resumed = run(_args(data, out, 'cut') + ['--resume', 'auto'])
    assert resumed.returncode == 0, resumed.stderr
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    assert_same_run(out / 'ref', out / 'cut')
