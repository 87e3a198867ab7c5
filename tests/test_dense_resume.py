"""Detection and segmentation runs lose nothing (src/mm/safe_runner.py, src/mm/preemption.py): SIGKILL at a
random iteration, SIGKILL in the middle of writing a checkpoint, a truncated newest checkpoint, SIGTERM /
SIGUSR1 (one checkpoint where the run stands, inside an epoch too, exit code 75), then ``--resume``: the
run ends with weights, optimizer and scheduler states (and RNG states) bitwise equal to the run never
interrupted, with the shipped models' dropout and drop path on and validation between checkpoints. And
gradient accumulation (mmengine's ``optim_wrapper.accumulative_counts``) in a real run."""
import contextlib
import os
import random
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmseg')
pytest.importorskip('mmdet')

from dense_e2e import FPN, ITERS, PY, ROOT, SEG, assert_bitwise_equal  # noqa: E402
from helpers import free_port, wait_for_log  # noqa: E402
from src.mm.checkpoints import load_run_checkpoint  # noqa: E402
from src.mm.run import main  # noqa: E402
from src.studies.shapes import make_shapes  # noqa: E402
from src.utils.preemption import EXIT_PREEMPTED  # noqa: E402

RETINANET = 'configs/detection/shapes/retinanet_convmlp_s_fpn_shapes.py'
DET = ['train_dataloader.batch_size=2', 'val_dataloader.batch_size=1', 'model.test_cfg.score_thr=0.0',
       'train_dataloader.dataset.pipeline.2.scale=(64,64)', 'val_dataloader.dataset.pipeline.1.scale=(64,64)',
       f'train_cfg.max_epochs={ITERS // 2}', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
       'default_hooks.logger.interval=1', 'randomness.seed=5']
ENV = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHON=PY)

# Runs an entry script with mmengine's file writes patched: the TEAR_SAVE-th checkpoint write puts half
# its bytes on disk, then the process SIGKILLs itself (a crash in the middle of saving, deterministic).
TEAR_SAVE = """
import os, runpy, signal, sys
from mmengine.fileio.backends import LocalBackend
put, left = LocalBackend.put, [int(os.environ['TEAR_SAVE'])]
def tearing_put(self, obj, filepath):
    if str(filepath).endswith('.tmp'):
        left[0] -= 1
        if left[0] == 0:
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    put(self, obj, filepath)
LocalBackend.put = tearing_put
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def _start(cmd, log, **env) -> subprocess.Popen:
    """``cmd`` from the repo root in its own session, stdout and stderr to ``log``."""
    with open(log, 'w') as f:
        return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=dict(ENV, MASTER_PORT=str(free_port()), **env),
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc, log) -> str:
    assert proc.wait(timeout=600) == 0, log.read_text()[-6000:]
    return log.read_text()


def _process_tree(pid: int) -> list:
    """``pid`` and its descendants (torchrun starts its workers in sessions of their own)."""
    children = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            children.setdefault(int(stat.read_text().rsplit(')', 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # a process that just ended
            continue
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _kill_when(proc, log, text: str) -> None:
    """SIGKILL ``proc`` and every process it started as soon as ``text`` appears in its log."""
    wait_for_log(log, lambda logged: text in logged, proc)
    for pid in _process_tree(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f'finished before {text!r}:\n{log.read_text()[-3000:]}'


def _newest(work) -> tuple:
    """(step, path) of the newest checkpoint in ``work``."""
    return max((int(re.search(r'(\d+)', p.name).group(1)), p) for p in work.glob('*_*.pth'))


def _train(task, config, data, work, *options):
    return [PY, ROOT / f'{task}/train.py', ROOT / config, '--data-root', data, '--work-dir', work,
            '--cfg-options', *(SEG if task == 'segmentation' else DET), *options]


@pytest.mark.slow
def test_segmentation_killed_while_saving_anywhere_and_torn_resumes_bitwise(tmp_path):
    """Iteration loop, 1 process: killed while writing checkpoint k (max_keep_ckpts=1), resumed and
    SIGKILLed at a random later iteration, newest checkpoint truncated, resumed to the end."""
    data = make_shapes(tmp_path / 'shapes', num_train=4, num_val=2, size=(64, 64)) / 'ade'
    ref_work, work = tmp_path / 'ref', tmp_path / 'cut'
    k = random.randint(2, ITERS - 2)
    ref = _start(_train('segmentation', FPN, data, ref_work, 'default_hooks.checkpoint.max_keep_ckpts=1'),
                 tmp_path / 'ref.log')

    log = tmp_path / 'cut1.log'
    torn = _start([PY, '-c', TEAR_SAVE, *_train('segmentation', FPN, data, work,
                                               'default_hooks.checkpoint.max_keep_ckpts=1')[1:]], log, TEAR_SAVE=str(k))
    assert torn.wait(timeout=600) == -signal.SIGKILL, log.read_text()[-3000:]
    previous = work / f'iter_{k - 1}.pth'
    assert sorted(p.name for p in work.glob('*.pth')) == [previous.name]  # older removed only after it was whole
    assert (work / 'last_checkpoint').read_text() == str(previous)
    [unfinished] = work.glob(f'.iter_{k}.pth.*.tmp')

    log = tmp_path / 'cut2.log'
    j = random.randint(k + 1, ITERS - 1)
    cut = _start(_train('segmentation', FPN, data, work, 'default_hooks.checkpoint.max_keep_ckpts=2') + ['--resume'],
                 log)
    _kill_when(cut, log, f'Iter(train) [{j}/{ITERS}]')
    text = log.read_text()
    assert f'removing {unfinished}' in text and f'resumed epoch: 0, iter: {k - 1}' in text
    step, newest = _newest(work)
    size = newest.stat().st_size // 2
    os.truncate(newest, size)

    log = tmp_path / 'cut3.log'
    text = _finish(_start(_train('segmentation', FPN, data, work) + ['--resume'], log), log)
    assert f'warning: resume: skipping cannot read checkpoint {newest} ({size} bytes): truncated' in text
    assert f'resumed epoch: 0, iter: {step - 1}' in text and f'Iter(train) [{step - 1}/{ITERS}]' not in text
    _finish(ref, tmp_path / 'ref.log')
    assert_bitwise_equal(ref_work / f'iter_{ITERS}.pth', work / f'iter_{ITERS}.pth')


def test_resume_without_a_loadable_checkpoint_is_one_line(tmp_path, capsys):
    data = make_shapes(tmp_path / 'shapes', num_train=1, num_val=1, size=(64, 64)) / 'ade'
    work = tmp_path / 'work'
    work.mkdir()
    for step in (2, 4):
        (work / f'iter_{step}.pth').write_bytes(b'PK\x03\x04 torn')
    args = [str(ROOT / FPN), '--data-root', str(data), '--work-dir', str(work)]
    assert main('segmentation', 'train', args + ['--resume']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    for line, step in zip(err, (4, 2)):  # newest first, each named with its size
        assert line.startswith(f'warning: resume: skipping cannot read checkpoint {work / f"iter_{step}.pth"} '
                               f'(9 bytes): truncated'), line
    assert len(err) == 3 and err[2].startswith(f'segmentation/train.py: error: no checkpoint of {work} loads (2 tried, '
                                               f'the newest: ')
    assert main('segmentation', 'train', args + ['--resume', str(work / 'iter_2.pth')]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f'segmentation/train.py: error: cannot read checkpoint {work / "iter_2.pth"} (9 bytes): '
                           f'truncated')


def test_runner_config_is_formatted_once_and_follows_changes(monkeypatch):
    """The run's config (src/mm/safe_runner.py's FormattedOnceConfig) runs yapf once, not at each of the
    runner's requests (start, every checkpoint), and gives the text mmengine gives, after a change too."""
    import copy

    import mmengine.config.config as mm_config
    from mmengine.config import Config

    from src.mm.safe_runner import FormattedOnceConfig
    formatted, format_code = [], mm_config.FormatCode  # yapf's, as mmengine calls it

    def counted(text, **kwargs):
        formatted.append(text)
        return format_code(text, **kwargs)
    monkeypatch.setattr(mm_config, 'FormatCode', counted)
    plain = Config.fromfile(str(ROOT / FPN))
    run_cfg = copy.deepcopy(FormattedOnceConfig.of(plain))  # the runner's own copy, as mmengine makes it
    assert type(run_cfg) is FormattedOnceConfig
    assert [run_cfg.pretty_text for _ in range(5)] == [plain.pretty_text] * 5 and len(formatted) == 2
    run_cfg.train_cfg.max_iters = 7
    assert 'max_iters=7' in run_cfg.pretty_text and len(formatted) == 3
    plain.train_cfg.max_iters = 7
    assert run_cfg.pretty_text == plain.pretty_text


def test_resume_takes_the_newest_loadable_checkpoint_and_its_seed(tmp_path, capsys):
    from src.mm.config import prepare_config
    from src.mm.run import parse_args
    data = make_shapes(tmp_path / 'shapes', num_train=1, num_val=1, size=(64, 64)) / 'ade'
    work = tmp_path / 'work'

    def config():
        args = parse_args('segmentation', 'train', [str(ROOT / FPN), '--data-root', str(data), '--work-dir', str(work),
                                                    '--resume'])
        return prepare_config(args, 'segmentation', 'train')
    cfg = config()  # nothing to resume yet: a new run
    assert (cfg.resume, cfg.load_from) == (False, None) and 'starting from scratch' in capsys.readouterr().err
    assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook'
    work.mkdir()
    for step in (2, 9, 10):  # 10 is newer than 9 (numbers, not names, are compared)
        torch.save({'meta': {'epoch': 0, 'iter': step, 'seed': step}, 'state_dict': {}}, work / f'iter_{step}.pth')
    os.truncate(work / 'iter_10.pth', 100)
    cfg = config()
    assert (cfg.resume, cfg.load_from, cfg.randomness.seed) == (True, str(work / 'iter_9.pth'), 9)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f'warning: resume: skipping cannot read checkpoint {work / "iter_10.pth"} (100 bytes)')



@pytest.mark.parametrize('by_epoch,regular,preempted,newest', [
    (False, (4, 8), 6, 'iter_8.pth'),      # stale: saved before iter_8
    (False, (4,), 6, 'preempted.pth'),     # iteration 6 after iter_4
    (True, (1, 2), (2, 13), 'preempted.pth'),  # inside epoch 3, after epoch_2
    (True, (1, 2, 3), (2, 13), 'epoch_3.pth'),  # epoch 3 saved later, the removal of preempted.pth cut short
])
def test_resume_places_a_preempted_checkpoint_by_where_it_stood(tmp_path, by_epoch, regular, preempted, newest):
    from mmengine.config import Config
    from src.mm.checkpoints import find_resume_checkpoint
    cfg = Config(dict(work_dir=str(tmp_path), default_hooks=dict(checkpoint=dict(type='SafeCheckpointHook',
                                                                                 by_epoch=by_epoch))))
    for n in regular:
        meta = dict(epoch=n, iter=n * 5) if by_epoch else dict(epoch=0, iter=n)
        torch.save({'meta': meta, 'state_dict': {}}, tmp_path / f'{"epoch" if by_epoch else "iter"}_{n}.pth')
    epoch, it = preempted if by_epoch else (0, preempted)
    torch.save({'meta': dict(epoch=epoch, iter=it), 'state_dict': {}}, tmp_path / 'preempted.pth')
    path, ckpt = find_resume_checkpoint(cfg)
    assert path == str(tmp_path / newest) and ckpt['meta'] == torch.load(path, weights_only=True)['meta']


# ---- preemption (src/mm/preemption.py): SIGTERM / SIGUSR1 save where the run stands, exit code 75 --------------
def _stop_when(proc, log, pattern: str, send) -> int:
    """Once ``pattern`` (a regex with one group: an iteration) is in ``log``, ``send()`` the signal; returns the
    last iteration the log had shown by then."""
    wait_for_log(log, lambda text: re.search(pattern, text), proc)
    seen = max(int(i) for i in re.findall(pattern, log.read_text(errors='replace')))
    send()
    assert proc.wait(timeout=600) == EXIT_PREEMPTED, log.read_text()[-6000:]
    return seen


@pytest.mark.slow
def test_two_processes_killed_then_sigterm_resume_bitwise(fpn_reference, tmp_path):
    """dist_segmentation.sh, 2 CPU processes (gloo), a checkpoint every second iteration: SIGKILL to all of them
    inside iteration 3, ``--resume``; then SIGTERM to the launcher's process group (as Slurm, a spot reclaim or
    ``kill -TERM -PGID`` send it) as soon as the resumed run logs an iteration: one checkpoint at the next
    iteration end (``preempted.pth``, or the regular one saved after that very iteration), exit code 75; the
    same command with --resume ends bitwise equal to the run never interrupted."""
    data, reference = fpn_reference

    def launch(work, *args):
        return ['bash', ROOT / 'dist_segmentation.sh', FPN, 2, data, '--work-dir', work, '--cfg-options', *SEG,
                'default_hooks.checkpoint.interval=2', *args]  # --resume after --cfg-options' values
    log, work = tmp_path / 'cut.log', tmp_path / 'cut'
    cut = _start(launch(work), log)
    _kill_when(cut, log, f'Iter(train) [3/{ITERS}]')
    assert _newest(work) == (2, work / 'iter_2.pth')

    log = tmp_path / 'stop.log'
    cut = _start(launch(work, '--resume'), log)
    seen = _stop_when(cut, log, rf'Iter\(train\) \[(\d+)/{ITERS}\]', lambda: os.killpg(cut.pid, signal.SIGTERM))
    text = log.read_text()
    assert 'resumed epoch: 0, iter: 2' in text
    stop = re.search(rf'stopped by SIGTERM at iteration (\d+)/{ITERS}: saved (\S+); run the same command with '
                     r'--resume to go on \(exit code 75\)', text)
    assert stop and seen <= int(stop.group(1)) <= seen + 1, text[-3000:]  # within the iteration under way
    step = int(stop.group(1))
    saved = work / ('preempted.pth' if step % 2 else f'iter_{step}.pth')  # no second file for the same state
    assert stop.group(2) == str(saved) and 'the run stopped for a signal with its checkpoint saved (exit code 75)' in text
    assert (work / 'last_checkpoint').read_text() == str(saved)
    assert load_run_checkpoint(saved)['meta']['iter'] == step

    log = tmp_path / 'resume.log'
    text = _finish(_start(launch(work, '--resume'), log), log)
    assert f'resumed epoch: 0, iter: {step}' in text
    assert not (work / 'preempted.pth').exists()  # the next regular save removed it
    assert_bitwise_equal(reference, work / f'iter_{ITERS}.pth')


@pytest.mark.slow
def test_detection_killed_then_stopped_inside_an_epoch_resumes_there_bitwise(tmp_path):
    """Epoch loop, 1 process, 4 iterations per epoch, validation after each: SIGKILL inside epoch 2,
    ``--resume`` (from epoch 1's checkpoint); then SIGUSR1 inside epoch 2 of the resumed run: the next resume
    draws the epoch's trained batches again without training (ExactEpochBasedTrainLoop) and trains on from
    there, bitwise equal to the run never interrupted."""
    data = make_shapes(tmp_path / 'shapes', num_train=8, num_val=2, size=(64, 64)) / 'coco'
    options = ['train_cfg.max_epochs=2']  # after DET's 3: the last value wins
    ref = _start(_train('detection', RETINANET, data, tmp_path / 'ref', *options), tmp_path / 'ref.log')
    log, work = tmp_path / 'cut.log', tmp_path / 'cut'
    cut = _start(_train('detection', RETINANET, data, work, *options), log)
    _kill_when(cut, log, f'Epoch(train) [2][{random.randint(1, 3)}/4]')
    assert _newest(work) == (1, work / 'epoch_1.pth')

    log = tmp_path / 'stop.log'
    cut = _start(_train('detection', RETINANET, data, work, *options) + ['--resume'], log)
    _stop_when(cut, log, r'Epoch\(train\) \[2\]\[(\d+)/4\]', lambda: cut.send_signal(signal.SIGUSR1))
    text = log.read_text()
    assert 'resumed epoch: 1, iter: 4' in text
    stop = re.search(r'stopped by SIGUSR1 at epoch 2 iteration (\d)/4: saved (\S+);', text)
    assert stop and stop.group(2) == str(work / 'preempted.pth'), text[-3000:]
    k = int(stop.group(1))

    log = tmp_path / 'resume.log'
    text = _finish(_start(_train('detection', RETINANET, data, work, *options) + ['--resume'], log), log)
    assert f'resumed epoch: 1, iter: {4 + k}' in text
    assert f'Advance dataloader {k} steps to skip data that has already been trained in epoch 2' in text
    assert 'restarts that epoch' not in text
    _finish(ref, tmp_path / 'ref.log')
    assert_bitwise_equal(tmp_path / 'ref' / 'epoch_2.pth', work / 'epoch_2.pth')


@pytest.mark.slow
def test_accumulative_counts_steps_the_optimizer_every_second_iteration(tmp_path):
    """Gradient accumulation for detection and segmentation is mmengine's optim_wrapper.accumulative_counts:
    with 2, a real Semantic FPN-S run updates its weights after iterations 2 and 4 only."""
    data = make_shapes(tmp_path / 'shapes', num_train=2, num_val=1, size=(64, 64)) / 'ade'
    work = tmp_path / 'work'
    args = [str(ROOT / FPN), '--data-root', str(data), '--work-dir', str(work), '--cfg-options', *SEG,
            'train_cfg.max_iters=4', 'train_cfg.val_interval=100', 'optim_wrapper.accumulative_counts=2',
            'default_hooks.checkpoint.max_keep_ckpts=4']
    assert main('segmentation', 'train', args) == 0
    ckpts = [load_run_checkpoint(work / f'iter_{i}.pth') for i in range(1, 5)]
    steps = [max((s['step'] for s in c['optimizer']['state'].values()), default=0) for c in ckpts]
    assert [int(s) for s in steps] == [0, 1, 1, 2]
    params = [{k: v for k, v in c['state_dict'].items() if 'running_' not in k and 'num_batches' not in k}
              for c in ckpts]  # BatchNorm's buffers change at every iteration
    for a, b, updated in ((params[0], params[1], True), (params[1], params[2], False), (params[2], params[3], True)):
        assert any(not torch.equal(a[k], b[k]) for k in a) == updated
