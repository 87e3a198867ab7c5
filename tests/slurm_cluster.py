"""A real Slurm cluster on this host, inside a temporary folder, for the tests (tests/test_slurm.py).

Debian's slurmctld, slurmd, slurm-client and munge packages (``tools/install.sh slurm``) and root are
needed; without them the fixtures skip their tests and say why. Everything of the cluster (munge key,
socket and log, ``slurm.conf``, state, spool, pid files, logs) lives under one folder; the daemons run in
the foreground (``munged -F``, ``slurmctld -D``, ``slurmd -D``) as children of the test process and are
stopped by their process ids. Jobs are cancelled first; a ``slurmstepd`` or task left behind is found by
``SLURM_CONF=<this cluster's conf>`` in its environment and stopped by its pid.

    with SlurmCluster(tmp_path) as cluster:
        cluster.run(['srun', '-n', '2', 'hostname'])

or the session fixture :func:`slurm_cluster` (one node, 2 CPUs; about 1.2 s to bring up).

What a test of preemption needs to know about this Slurm (22.05):

* ``scontrol requeue JOB`` sends SIGCONT and SIGTERM to the tasks, kills the batch shell, and the job waits
  PENDING with Reason=BeginTime for about 2 minutes; :meth:`SlurmCluster.release` starts it at once.
* ``scancel --signal=USR1 JOB`` reaches the tasks of the steps; with ``--batch`` the batch shell only, as
  ``sbatch --signal=B:USR1@T`` does before the time limit.
* KillWait is 30 s here (Slurm's default): the time a task has after SIGTERM to save its checkpoint.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

import pytest

BINARIES = ('munged', 'mungekey', 'slurmctld', 'slurmd', 'srun', 'sbatch', 'scontrol', 'squeue', 'sinfo', 'scancel')
FINAL = ('COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'PREEMPTED')


PATH = os.pathsep.join([os.environ.get('PATH', os.defpath), '/usr/sbin', '/sbin'])  # the daemons live in sbin


def missing_requirements() -> Optional[str]:
    """Why a cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return 'the Slurm tests need root (slurmd runs the jobs as root here)'
    missing = [b for b in BINARIES if shutil.which(b, path=PATH) is None]
    if missing:
        return (f'Slurm is not installed (no {", ".join(missing)}): tools/install.sh slurm installs it as root where '
                f'apt-get is available (make test does)')
    return None


def _free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(('127.0.0.1', 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


SLURM_CONF = """\
ClusterName={cluster}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/run/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
MpiDefault=none
SwitchType=switch/none
JobRequeue=1
ReturnToService=2
KillWait=30
MinJobAge=300
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=60
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    """slurmctld, one slurmd per node and munged, all on this host. ``nodes=1``: one node named after the
    host; ``nodes>1``: nodes n1..nN, each its own slurmd (port, spool, log), NodeAddr 127.0.0.1. ``env`` is
    the client environment (``SLURM_CONF`` set, no ``SLURM_*`` of an outer job)."""

    def __init__(self, root: Union[str, os.PathLike], cpus: int = 2, nodes: int = 1, start_timeout: float = 30.0):
        self.root = Path(root).resolve()
        self.cpus, self.nnodes, self.start_timeout = cpus, nodes, start_timeout
        self.host = socket.gethostname().split('.')[0]
        self.conf = self.root / 'slurm.conf'
        self.procs: Dict[str, subprocess.Popen] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'SBATCH_', 'SRUN_', 'SALLOC_'))}
        self.env.update(SLURM_CONF=str(self.conf), PATH=PATH)
        self.node_names: List[str] = []

    # ---- life -----------------------------------------------------------------------------------
    def start(self) -> 'SlurmCluster':
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)  # munged wants o+x on the folders above its socket (pytest's are 0700)
        for d, mode in (('munge', 0o700), ('run', 0o755), ('state', 0o755), ('spool', 0o755), ('log', 0o755),
                        ('jobs', 0o755)):
            (r / d).mkdir(exist_ok=True)
            os.chmod(r / d, mode)
        key = r / 'munge' / 'munge.key'
        if not key.exists():
            subprocess.run(['mungekey', '--create', f'--keyfile={key}', '--bits=1024'], check=True)
        ctld_port, slurmd_port, *node_ports = _free_ports(2 + self.nnodes)
        cluster = 't' + re.sub(r'[^a-z0-9]', '', r.name.lower())[-20:]
        if self.nnodes == 1:
            self.node_names = [self.host]
            nodes = f'NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 State=UNKNOWN'
        else:
            self.node_names = [f'n{i + 1}' for i in range(self.nnodes)]
            nodes = '\n'.join(f'NodeName={n} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={p} CPUs={self.cpus} '
                              'RealMemory=1000 State=UNKNOWN' for n, p in zip(self.node_names, node_ports))
        for n in self.node_names:
            (r / 'spool' / n).mkdir(exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(cluster=cluster, host=self.host, root=r, ctld_port=ctld_port,
                                               slurmd_port=slurmd_port, nodes=nodes))
        try:
            self._spawn('munged', ['munged', '-F', '-f', f'--key-file={key}', f'--socket={r}/run/munge.sock',
                                   f'--pid-file={r}/run/munged.pid', f'--log-file={r}/munge/munged.log',
                                   f'--seed-file={r}/munge/munged.seed'])
            self._wait(lambda: (r / 'run' / 'munge.sock').exists(), 10, 'munged socket')
            self._spawn('slurmctld', ['slurmctld', '-D', '-f', str(self.conf)])
            for n in self.node_names:
                self._spawn(f'slurmd.{n}', ['slurmd', '-D', '-f', str(self.conf), '-N', n])
            self._wait(lambda: self.run(['sinfo', '-h', '-N', '-o', '%T'], check=False).stdout.split()
                       == ['idle'] * self.nnodes, self.start_timeout, 'nodes idle')
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: List[str]) -> None:
        with open(self.root / 'log' / f'{name}.out', 'wb') as log:
            self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmError(f'{name} exited with {p.returncode} while waiting for {what}:\n{self.logs()}')
            if pred():
                return
            time.sleep(0.1)
        raise SlurmError(f'timed out after {timeout}s waiting for {what}:\n{self.logs()}')

    def logs(self, tail: int = 30) -> str:
        out = []
        for f in sorted((self.root / 'log').glob('*')) + [self.root / 'munge' / 'munged.log']:
            if f.is_file():
                out.append(f'--- {f.name}\n' + '\n'.join(f.read_text(errors='replace').splitlines()[-tail:]))
        return '\n'.join(out)

    def our_pids(self) -> List[int]:
        """Processes (slurmstepd, tasks) whose environment names this cluster's slurm.conf."""
        needle = f'SLURM_CONF={self.conf}'.encode() + b'\0'
        mine = {os.getpid()} | {p.pid for p in self.procs.values()}
        found = []
        for d in Path('/proc').iterdir():
            if d.name.isdigit() and int(d.name) not in mine:
                try:
                    if needle in (d / 'environ').read_bytes():
                        found.append(int(d.name))
                except OSError:
                    pass
        return found

    def stop(self) -> None:
        if self.procs.get('slurmctld') and self.procs['slurmctld'].poll() is None:
            self.run(['scancel', '--user=root'], check=False, timeout=15)
            try:
                self._wait(lambda: not self.run(['squeue', '-h', '-o', '%i'], check=False).stdout.strip(), 15,
                           'queue empty')
            except SlurmError:
                pass
        for name in [k for k in self.procs if k.startswith('slurmd.')] + ['slurmctld', 'munged']:
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for sig in (signal.SIGTERM, signal.SIGKILL):  # slurmstepd outlive slurmd; tasks of a wedged step
            left = self.our_pids()
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if left:
                time.sleep(1)

    def __enter__(self) -> 'SlurmCluster':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- clients ----------------------------------------------------------------------------------
    def run(self, argv, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run([str(a) for a in argv], env=kw.pop('env', self.env), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL, **kw)
        if check and p.returncode != 0:
            raise SlurmError(f'{argv} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}')
        return p

    def sbatch(self, script: str, *options: str, args: Iterable = (), env: Optional[dict] = None, cwd=None) -> int:
        """``sbatch OPTIONS SCRIPT ARGS`` -> job id. ``script``: a path, or a script's text (starting with #!)."""
        if script.startswith('#!'):
            path = self.root / 'jobs' / f'job{time.monotonic_ns()}.sh'
            path.write_text(script)
            path.chmod(0o755)
            script = str(path)
        out = self.run(['sbatch', '--parsable', *options, script, *args], env=dict(self.env, **(env or {})),
                       cwd=cwd or self.root).stdout
        return int(out.strip().split(';')[0])

    def job_info(self, jobid: int) -> Dict[str, str]:
        """``scontrol show job -o`` as a dict ({} for a job Slurm no longer knows)."""
        p = self.run(['scontrol', 'show', 'job', '-o', str(jobid)], check=False)
        info: Dict[str, str] = {}
        for tok in p.stdout.split() if p.returncode == 0 else []:
            if '=' in tok:
                k, v = tok.split('=', 1)
                info.setdefault(k, v)
        return info

    def wait_state(self, jobid: int, states, timeout: float = 60, poll: float = 0.2) -> Dict[str, str]:
        states = {states} if isinstance(states, str) else set(states)
        deadline, info = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            info = self.job_info(jobid)
            if info.get('JobState') in states:
                return info
            time.sleep(poll)
        raise SlurmError(f'job {jobid} not in {states} after {timeout}s: {info}\n{self.logs(10)}')

    def requeue(self, jobid: int) -> None:
        self.run(['scontrol', 'requeue', str(jobid)])

    def release(self, jobid: int, timeout: float = 60) -> None:
        """Start a requeued job now instead of after its ~2 min BeginTime. slurmd refuses to relaunch a job
        within the second it killed its previous run (the job would end FAILED): so wait until the job is
        PENDING, then a little more than a second."""
        self.wait_state(jobid, 'PENDING', timeout)
        time.sleep(1.1)
        self.run(['scontrol', 'update', f'jobid={jobid}', 'starttime=now'])

    def signal(self, jobid: int, sig: str = 'USR1', batch: bool = False) -> None:
        """``scancel --signal=SIG``: to the tasks of the job's steps, or with ``batch`` to the batch shell."""
        self.run(['scancel', f'--signal={sig}', *(['--batch'] if batch else []), str(jobid)])


def _cluster(tmp_path_factory, name: str, **kw):
    why = missing_requirements()
    if why:
        pytest.skip(why)
    c = SlurmCluster(tmp_path_factory.mktemp(name), **kw).start()  # short paths: unix sockets < 108 bytes
    try:
        yield c
    finally:
        c.stop()
        assert not c.our_pids(), 'processes of the test cluster left behind'


@pytest.fixture(scope='session')
def slurm_cluster(tmp_path_factory):
    """One node named after this host, 2 CPUs, partition ``debug``."""
    yield from _cluster(tmp_path_factory, 'slurm')


@pytest.fixture(scope='session')
def slurm_two_nodes(tmp_path_factory):
    """Two nodes n1, n2 of 1 CPU each (one slurmd each, on this host): multi-node runs."""
    yield from _cluster(tmp_path_factory, 'slurm2n', cpus=1, nodes=2)
