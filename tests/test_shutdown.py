"""The entry scripts' quick exit (src/utils/shutdown.py): the exit code, output, logs and atexit functions
as sys.exit leaves them, and every entry script ending through it."""
import subprocess
import sys

from conftest import ROOT

SCRIPT = """
import atexit, logging, sys
sys.path.insert(0, {root!r})
from src.utils.shutdown import exit_process
def main():
    log = logging.getLogger('run')
    log.addHandler(logging.FileHandler({log!r}))  # open until logging's atexit function closes it
    log.warning('logged last')
    atexit.register(lambda: print('atexit ran', file=sys.stderr))
    with open({out!r}, 'w') as f:
        f.write('written')
    print('printed last', end='')  # no newline: in stdout's buffer until exit flushes it
    return {code}
exit_process(main())
"""


def test_exit_process_keeps_the_code_output_logs_and_atexit(tmp_path):
    for code in (0, 3):
        script = SCRIPT.format(root=str(ROOT), log=str(tmp_path / 'run.log'), out=str(tmp_path / 'out.txt'),
                               code=code)
        proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == code, proc.stderr
        assert proc.stdout == 'printed last' and proc.stderr.endswith('atexit ran\n')
        assert (tmp_path / 'out.txt').read_text() == 'written'
        assert (tmp_path / 'run.log').read_text().splitlines()[-1] == 'logged last'


def test_every_entry_script_exits_through_exit_process():
    scripts = [ROOT / 'classification.py', *ROOT.glob('detection/*.py'), *ROOT.glob('segmentation/*.py'),
               *ROOT.glob('tools/*.py')]
    ending = [p for p in scripts if 'main(' in p.read_text() and "__name__ == '__main__'" in p.read_text()]
    assert len(ending) >= 15
    missing = [str(p.relative_to(ROOT)) for p in ending if 'exit_process(main(' not in p.read_text()]
    assert not missing, f'end these with exit_process(main(...)) (src/utils/shutdown.py): {missing}'
