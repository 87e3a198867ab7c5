"""Slurm (issue 23) on a real cluster of this host (tests/slurm_cluster.py): the slurm_*.sh launchers submitted
with sbatch and run through srun from the "login node" (this process), preempted runs that requeue themselves
or are requeued by Slurm, resume without a named checkpoint and end bitwise equal to a run never
interrupted; a bad Slurm environment and a bad launcher command line are one line and exit code 2."""
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from classification_helpers import PY, ROOT, TINY_MODEL, assert_same_run, make_image_folder
from helpers import free_port, wait_for_log
from slurm_cluster import FINAL, slurm_cluster, slurm_two_nodes  # noqa: F401  (fixtures)
from src.utils.preemption import EXIT_PREEMPTED

STEPS = 18  # 3 classes x 48 images / 2 processes / batch 4
EPOCHS = 2


def _classification_args(data, out):
    """A tiny run that draws random numbers everywhere (augmentation, mixup / cutmix, drop path, EMA)."""
    return [str(a) for a in (data, *TINY_MODEL, '--epochs', EPOCHS, '-b', 4, '-j', 0, '--output', out, '--lr', 1e-3,
                             '--warmup-epochs', 1, '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', 0.25, '--mixup', 0.8,
                             '--cutmix', 1.0, '--drop-path', 0.1, '--model-ema', '--model-ema-decay', 0.9, '--seed', 5,
                             '--log-interval', 1)]


def _job_env(**extra):
    return dict(PYTHON=PY, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', **extra)


def _wait_for(path: Path, pattern: str, proc=None, timeout: float = 300) -> str:
    """The text of ``path`` once ``pattern`` (a regex) is in it; AssertionError if ``proc`` ends first."""
    return wait_for_log(path, lambda text: re.search(pattern, text), proc, timeout, poll=0.02, what=repr(pattern),
                        must_run=True)


def _one_error_line(text: str, prog: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'{prog}: error: '), text
    return lines[0]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """The image folder and the reference run (2 processes under torchrun, never interrupted), started in
    the background: ``tiny.reference()`` waits for it and returns its run folder."""
    root = tmp_path_factory.mktemp('tiny')
    data = make_image_folder(root / 'data', train=48)
    out = root / 'out'
    log = open(root / 'ref.log', 'w')
    proc = subprocess.Popen([str(ROOT / 'dist_classification.sh'), '2', *_classification_args(data, out),
                             '--experiment', 'ref'], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **_job_env(MASTER_PORT=str(free_port()))})

    class Tiny:
        def __init__(self):
            self.data, self.out, self.root = data, out, root

        def reference(self) -> Path:
            assert proc.wait(timeout=600) == 0, (root / 'ref.log').read_text()[-3000:]
            return out / 'ref'
    yield Tiny()
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


# ---- classification ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_sbatch_classification_requeued_mid_epoch_resumes_bitwise(slurm_cluster, tiny, tmp_path):
    """sbatch slurm_classification.sh with 2 tasks; ``scontrol requeue`` in the first epoch (SIGTERM to the
    tasks, as a preemption by Slurm): the tasks save, Slurm requeues the job, the restarted job resumes by
    itself from the recovery checkpoint and ends as the run never interrupted."""
    c = slurm_cluster
    job_out = tmp_path / 'job.out'
    j = c.sbatch(str(ROOT / 'slurm_classification.sh'), '-n', '2', '-o', str(job_out),
                 args=['debug', 'requeued', *_classification_args(tiny.data, tiny.out)], env=_job_env(), cwd=tmp_path)
    log = tiny.out / 'requeued' / 'train.log'
    _wait_for(log, rf'epoch 1/{EPOCHS} step 3/{STEPS}')
    c.requeue(j)
    info = c.wait_state(j, 'PENDING', 120)
    assert info['Restarts'] == '1' and info['Reason'] == 'BeginTime', info
    c.release(j)
    info = c.wait_state(j, FINAL, 300)
    text, out = log.read_text(), job_out.read_text()
    assert info['JobState'] == 'COMPLETED', (info, out[-5000:])
    stop = re.search(rf'stopped by SIGTERM at epoch 1 step (\d+)/{STEPS}: saved .*recovery.pth.tar', text)
    assert stop and 0 < int(stop.group(1)) < STEPS, text[-3000:]  # inside the epoch
    assert re.search(rf'resuming from \S+: 0 epochs and {stop.group(1)} steps done', text), text[-3000:]
    assert f'slurm_classification.sh: job {j} (restart 1): 2 task(s)' in out and '--resume auto' in out
    assert_same_run(tiny.reference(), tiny.out / 'requeued')


@pytest.mark.slow
def test_srun_classification_stopped_by_usr1_exits_75_and_the_same_command_resumes(slurm_cluster, tiny, tmp_path):
    """From a login node (no allocation): the launcher calls srun itself. SIGUSR1 to the launcher reaches the
    tasks, which save and exit 75; the launcher exits 75; the same command again finishes the run."""
    cmd = [str(ROOT / 'slurm_classification.sh'), 'debug', 'interactive', *_classification_args(tiny.data, tiny.out)]
    env = {**slurm_cluster.env, **_job_env(GPUS='2', CPUS_PER_TASK='1')}
    log = tiny.out / 'interactive' / 'train.log'
    with open(tmp_path / 'first.log', 'w') as f:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_for(log, rf'epoch 1/{EPOCHS} step 3/{STEPS}', proc)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=300) == EXIT_PREEMPTED, (tmp_path / 'first.log').read_text()[-3000:]
    first = (tmp_path / 'first.log').read_text()
    [start] = [line for line in first.splitlines() if line.startswith('slurm_classification.sh: 2 task(s)')]
    assert start.startswith('slurm_classification.sh: 2 task(s) of 1 CPU(s) on partition debug: srun -p debug '
                            '--job-name=interactive --ntasks=2 --cpus-per-task=1 --kill-on-bad-exit=1 ')
    assert '--gres' not in start and start.endswith('--launcher slurm --experiment interactive --resume auto')
    assert first.strip().endswith('slurm_classification.sh: the run stopped for a signal with its checkpoint saved '
                                  '(exit code 75): the same command resumes it'), first[-2000:]
    assert re.search(r'stopped by SIGUSR1 at epoch 1 step \d+/', log.read_text())
    again = slurm_cluster.run(cmd, env=env, check=False, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert 'resuming from' in log.read_text()
    assert_same_run(tiny.reference(), tiny.out / 'interactive')


@pytest.mark.slow
def test_sbatch_on_two_nodes_trains_as_two_processes_on_one(slurm_two_nodes, tiny, tmp_path):
    """-N 2 --ntasks-per-node=1: ranks from SLURM_PROCID, the rendezvous on the first node's address."""
    c = slurm_two_nodes
    job_out = tmp_path / 'job.out'
    j = c.sbatch(str(ROOT / 'slurm_classification.sh'), '-N', '2', '--ntasks-per-node=1', '-o', str(job_out),
                 args=['debug', 'two_nodes', *_classification_args(tiny.data, tiny.out)], env=_job_env(), cwd=tmp_path)
    info = c.wait_state(j, FINAL, 300)
    assert info['JobState'] == 'COMPLETED' and info['NodeList'] == 'n[1-2]', (info, job_out.read_text()[-3000:])
    assert 'slurm_classification.sh: job' in job_out.read_text() and '2 task(s) on n[1-2]' in job_out.read_text()
    assert_same_run(tiny.reference(), tiny.out / 'two_nodes')


# ---- segmentation ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sbatch_segmentation_time_limit_warning_requeues_itself_and_resumes_bitwise(slurm_cluster, fpn_reference,
                                                                                     tmp_path):
    """sbatch slurm_segmentation.sh with 2 tasks (Semantic FPN-S, an iteration schedule); SIGUSR1 to the batch
    shell, as ``--signal=B:USR1@180`` sends it before the time limit: the launcher passes it to the tasks,
    they save and exit 75, the job requeues itself, and the restarted job resumes (--resume) and ends as the
    run never interrupted."""
    from dense_e2e import FPN, ITERS, SEG, assert_bitwise_equal
    c = slurm_cluster
    data, reference = fpn_reference
    seg = [*SEG, 'default_hooks.checkpoint.interval=100', 'train_cfg.val_interval=100']  # saves: preempted, last
    options = [FPN, str(data), '--work-dir', str(tmp_path / 'cut'), '--cfg-options', *seg]
    job_out = tmp_path / 'job.out'
    j = c.sbatch(str(ROOT / 'slurm_segmentation.sh'), '-n', '2', '-o', str(job_out), args=['debug', 'seg', *options],
                 env=_job_env(), cwd=ROOT)
    _wait_for(job_out, rf'Iter\(train\) \[2/{ITERS}\]')
    c.signal(j, 'USR1', batch=True)
    info = c.wait_state(j, 'PENDING', 180)
    assert info['Restarts'] == '1', (info, job_out.read_text()[-5000:])
    c.release(j)
    info = c.wait_state(j, FINAL, 600)
    out = job_out.read_text()
    assert info['JobState'] == 'COMPLETED', (info, out[-5000:])
    stop = re.search(rf'stopped by SIGUSR1 at iteration (\d+)/{ITERS}: saved {tmp_path / "cut" / "preempted.pth"}; run '
                     r'the same command with --resume', out)
    assert stop, out[-5000:]
    assert f'slurm_segmentation.sh: the run stopped with its checkpoint saved: job {j} requeued' in out
    assert f'job {j} (restart 1): 2 task(s)' in out and f'resumed epoch: 0, iter: {stop.group(1)}' in out
    assert_bitwise_equal(reference, tmp_path / 'cut' / f'iter_{ITERS}.pth')


# ---- a bad Slurm environment ------------------------------------------------------------------------------
def test_training_in_the_batch_script_instead_of_a_step_is_one_line(slurm_cluster, tmp_path):
    """classification.py --launcher slurm started by the batch script itself (no srun): SLURM_PROCID is
    set there, but it is no job step."""
    j = slurm_cluster.sbatch(f'#!/bin/bash\n{PY} {ROOT / "classification.py"} {tmp_path} --launcher slurm\n', '-n', '2',
                             '-o', str(tmp_path / 'job.out'), env=_job_env())
    info = slurm_cluster.wait_state(j, FINAL, 120)
    line = _one_error_line((tmp_path / 'job.out').read_text(), 'classification.py')
    assert info['ExitCode'] == '2:0' and 'bad Slurm environment: running in the batch script, not in a job step' in line


def test_torchrun_variables_inside_srun_are_one_line(slurm_cluster, tmp_path):
    p = slurm_cluster.run(['srun', '-n', '1', PY, ROOT / 'classification.py', tmp_path, '--launcher', 'slurm'],
                          env={**slurm_cluster.env, 'WORLD_SIZE': '2'}, check=False, timeout=120)
    assert p.returncode == 2, p.stderr
    line = _one_error_line('\n'.join(s for s in p.stderr.splitlines() if not s.startswith('srun: ')),
                           'classification.py')
    assert 'task count mismatch: WORLD_SIZE=2 but SLURM_NTASKS=1' in line


STEP = dict(SLURM_JOB_ID='7', SLURM_STEP_ID='0', SLURM_NTASKS='2', SLURM_LOCALID='0', SLURM_JOB_NODELIST='node1')


@pytest.mark.parametrize('env,message', [
    (dict(STEP), 'SLURM_PROCID is not set'),
    (dict(STEP, SLURM_PROCID='0', SLURM_STEP_NUM_TASKS='1'),
     'task count mismatch: SLURM_NTASKS=2 but SLURM_STEP_NUM_TASKS=1'),
    ({k: v for k, v in dict(STEP, SLURM_PROCID='0').items() if k != 'SLURM_STEP_ID'}, 'not in a job step'),
    ({}, 'not inside a Slurm job'),
])
@pytest.mark.parametrize('program', ['classification.py', 'detection/train.py'])
def test_bad_slurm_environment_is_one_line(program, env, message, monkeypatch, capsys, tmp_path):
    for k in list(os.environ):
        if k.startswith('SLURM_') or k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if program == 'classification.py':
        from src.train.run import main
        code = main([str(make_image_folder(tmp_path / 'data', train=1, val=1)), *TINY_MODEL, '--launcher', 'slurm'])
    else:
        pytest.importorskip('mmdet')
        from src.mm.run import main
        from src.studies.shapes import make_shapes
        data = make_shapes(tmp_path / 'shapes', num_train=1, num_val=1, size=(64, 64)) / 'coco'
        code = main('detection', 'train', [str(ROOT / 'configs/detection/shapes/retinanet_convmlp_s_fpn_shapes.py'),
                                           '--data-root', str(data), '--launcher', 'slurm'])
    line = _one_error_line(capsys.readouterr().err, program)
    assert code == 2 and 'bad Slurm environment: ' in line and message in line, line


# ---- the launchers' command line ----------------------------------------------------------------------------
def _launch(script, *args, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    return subprocess.run([str(ROOT / script), *map(str, args)], env={**e, **_job_env(**env)}, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize('script,args,env,message', [
    ('slurm_classification.sh', [], {}, 'PARTITION and JOB_NAME are missing'),
    ('slurm_detection.sh', ['debug', 'job'], {}, 'CONFIG and DATA_ROOT are missing'),
    ('slurm_segmentation.sh', ['debug', 'job', 'no/such.py', '.'], {}, 'config not found: no/such.py'),
    ('slurm_classification.sh', ['debug', 'job', '.', '-c', 'no/such.yml'], {}, "config file not found: 'no/such.yml'"),
    ('slurm_classification.sh', ['debug', 'job', '.'], dict(GPUS='two'), "GPUS must be a whole number, got 'two'"),
    ('slurm_classification.sh', ['debug', 'job', '.'], dict(SLURM_JOB_ID='3', SLURM_STEP_ID='0'),
     'bad Slurm environment: already inside a job step'),
])
def test_launcher_usage_errors_are_one_line(script, args, env, message):
    p = _launch(script, *args, **env)
    line = _one_error_line(p.stderr, script)
    assert p.returncode == 2 and message in line and 'usage: ' + script in line and not p.stdout


def test_launcher_refuses_gpu_flags_and_unknown_partitions_on_the_cluster(slurm_cluster, tmp_path):
    env = {**slurm_cluster.env, **_job_env()}
    cmd = [str(ROOT / 'slurm_classification.sh'), 'debug', 'job', str(tmp_path)]
    p = slurm_cluster.run(cmd, env=dict(env, GPUS_PER_NODE='2'), check=False)
    line = _one_error_line(p.stderr, 'slurm_classification.sh')
    assert p.returncode == 2 and "GPUS_PER_NODE=2 but partition 'debug' has no GPUs: set GPUS_PER_NODE=0" in line
    p = slurm_cluster.run([cmd[0], 'gpu', *cmd[2:]], env=env, check=False)
    line = _one_error_line(p.stderr, 'slurm_classification.sh')
    assert p.returncode == 2 and "partition 'gpu' not found (sinfo lists no node of it): give one of: debug" in line
    # under sbatch the allocation decides: GPUS and GPUS_PER_NODE must agree with it
    for extra, message in ((dict(GPUS='4'), 'GPUS=4 but the job has 2 task(s): submit with sbatch -n 4'),
                           (dict(GPUS_PER_NODE='1'), 'GPUS_PER_NODE=1 but this job has no GPUs')):
        out = tmp_path / f'{next(iter(extra))}.out'
        j = slurm_cluster.sbatch(cmd[0], '-n', '2', '-o', str(out), args=cmd[1:], env=_job_env(**extra), cwd=tmp_path)
        info = slurm_cluster.wait_state(j, FINAL, 60)
        line = _one_error_line(out.read_text(), 'slurm_classification.sh')
        assert info['ExitCode'] == '2:0' and message in line, (info, line)
