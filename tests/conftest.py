"""Shared fixtures: an isolated torch hub cache and a local HTTP server that serves checkpoints; test folders
in memory where the machine has room; the threads of each pytest-xdist worker and which tests run together."""
import http.server
import logging
import os
import shutil
import socketserver
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MANIFEST = ROOT / 'tests' / 'data' / 'convmlp_state_dict_manifest.json'  # copy of ../shared's

# The suite uses 2 cores at most, shared by its pytest-xdist workers (`make test` runs 2): each worker's torch
# gets cores / workers threads, and so do the processes its tests start (OMP_NUM_THREADS, unless a test sets its
# own): more threads than cores slows a step tenfold.
WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
THREADS = max(1, min(2, os.cpu_count() or 1) // WORKERS)
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ['OMP_NUM_THREADS'] = str(THREADS)

SHM, SHM_NEEDED, SHM_PREFIX = Path('/dev/shm'), 6 << 30, 'convmlp-pytest-'
_SHM_BASE = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """``tmp_path`` folders in /dev/shm (memory) when it has 6 GB free and no --basetemp is given: the
    detection and segmentation runs write a 150 MB checkpoint at every step, and a 6-step Semantic FPN-S run
    took 1.5 to 1.8 s less there than on the disk (AVX2-only EPYC, 2 cores). A passing test's folder is
    removed when it ends (``tmp_path_retention_policy``), the base folder when every test passed; a failing
    test's folder stays for a look, for the next two sessions (as pytest keeps its folders under /tmp); of
    older ones, those untouched for an hour are removed (a session still running makes a folder per test)."""
    if config.option.basetemp is not None or not SHM.is_dir():
        return
    earlier = sorted(SHM.glob(f'{SHM_PREFIX}*'), key=lambda p: p.stat().st_mtime)
    for old in earlier[:-2]:
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    if shutil.disk_usage(SHM).free >= SHM_NEEDED:
        config.option.basetemp = config.stash[_SHM_BASE] = tempfile.mkdtemp(prefix=SHM_PREFIX, dir=SHM)


# pytest-xdist (`make test`: 2 workers): a module's tests run in one worker, so its module fixtures are made
# once, and so do the modules that share the session's Semantic FPN reference run (fpn_reference). Modules are
# handed out longest first, so the two workers end together; seconds of each (calls and fixtures) from a serial
# run on an AVX2-only EPYC (docs/testing.md), the others after these in xdist's order.
SHARED_SCOPE = {'tests/test_slurm.py': 'tests/test_dense_resume.py'}
MODULE_SECONDS = {'tests/test_dense_resume.py': 158 + 105, 'tests/test_quantize.py': 142, 'tests/test_fastpath.py': 99,
                  'tests/test_transfer.py': 73, 'tests/test_timm_contract.py': 70, 'tests/test_accumulation.py': 40,
                  'tests/test_detection.py': 37, 'tests/test_preemption.py': 36, 'tests/test_cam.py': 25,
                  'tests/test_layout.py': 23, 'tests/test_segmentation.py': 23, 'tests/test_ablation.py': 22,
                  'tests/test_tools.py': 20, 'tests/test_classification_dist.py': 19}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """The scheduling above, in place of xdist's default (``--dist load``); another ``--dist`` is left as is."""
    if config.getoption('dist') != 'load':
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesLongestFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split('::', 1)[0]
            return SHARED_SCOPE.get(module, module)

        def _assign_work_unit(self, node):
            if not getattr(self, 'ordered', False):  # the queue is complete at the first assignment
                for scope in sorted(self.workqueue, key=lambda m: -MODULE_SECONDS.get(m, 0)):
                    self.workqueue.move_to_end(scope)
                self.ordered = True
            super()._assign_work_unit(node)

    return ModulesLongestFirst(config, log)


def pytest_sessionfinish(session, exitstatus):
    base = session.config.stash.get(_SHM_BASE, None)
    if base is not None and exitstatus == 0:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def mmengine_logs_to_this_test():
    """mmengine's loggers keep the sys.stdout they were made with: an earlier test's capture, closed since.
    Point their console handlers at this test's, so they neither fail nor write into its stderr."""
    mmlogging = sys.modules.get('mmengine.logging')
    if mmlogging is not None:
        for logger in list(mmlogging.MMLogger._instance_dict.values()):
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:
                    handler.stream = sys.stdout  # not setStream(): it would flush the closed stream first
    yield


@pytest.fixture(scope='session')
def fpn_reference(tmp_path_factory):
    """One 2-process Semantic FPN-S run never interrupted (tests/dense_e2e.py): (data, final checkpoint).
    Checkpoint and validation intervals leave the training as it is (validation restores the RNG states), so
    the interrupted 2-process runs of test_dense_resume.py and test_slurm.py, each with intervals of its own,
    compare with this one run."""
    pytest.importorskip('mmseg')
    from dense_e2e import fpn_reference_run
    return fpn_reference_run(tmp_path_factory.mktemp('fpn_reference'))


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch hub cache in a fresh temporary folder; returns its checkpoints/ folder."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub' / 'checkpoints'
    torch.hub.set_dir(old)


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        mode, body = route
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if mode == 'truncate':  # promise the whole body, send half, hang up
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server():
    """Serve ``routes[path] = (mode, bytes)`` on 127.0.0.1; mode 'ok' or 'truncate'. Yields
    (base_url, routes)."""
    routes = {}
    handler = type('Handler', (_Handler,), {'routes': routes})
    server = socketserver.ThreadingTCPServer(('127.0.0.1', 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', routes
    finally:
        server.shutdown()
        server.server_close()
