"""The repository as a newcomer meets it: every module and tool named on the layout page, every relative link
of the README and the docs pointing at a file, a README that is a front page, a first command that installs
no OpenMMLab package, and the one error-line format."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT

LINK = re.compile(r'\]\(([^)\s]+)\)')
OPENMMLAB = ('mmcv', 'mmdet', 'mmengine', 'mmsegmentation', 'mmseg')


def _pages():
    return [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def test_layout_page_names_every_module_and_tool():
    page = (ROOT / 'docs' / 'layout.md').read_text()
    named = set(re.findall(r'`([^`]+)`', page))
    files = [p for p in (ROOT / 'src').rglob('*.py') if '__pycache__' not in p.parts]
    files += [p for p in (ROOT / 'tools').iterdir() if p.is_file()]
    missing = sorted(str(p.relative_to(ROOT)) for p in files if str(p.relative_to(ROOT)) not in named)
    assert not missing, f'docs/layout.md does not name {missing}'
    folders = {p.parent for p in files if p.parent.parent == ROOT / 'src'}
    for folder in folders:
        assert f'`{folder.relative_to(ROOT)}/`' in page, f'docs/layout.md has no section for {folder}'


def test_every_relative_link_of_readme_and_docs_exists():
    broken = []
    for page in _pages():
        for target in LINK.findall(page.read_text()):
            if re.match(r'[a-z]+:', target) or target.startswith('#'):
                continue
            path = (page.parent / target.split('#')[0]).resolve()
            if not path.exists():
                broken.append(f'{page.relative_to(ROOT)} -> {target}')
    assert not broken, broken


def test_readme_is_a_front_page_that_links_every_docs_page():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.splitlines()) <= 300
    for page in (ROOT / 'docs').glob('*.md'):
        assert f'](docs/{page.name})' in readme, f'README does not link docs/{page.name}'
    for command in ('make demo', 'make test'):
        assert f'\n{command}' in readme


def _plan(tmp_path, *layers):
    env = {'PATH': '/usr/bin:/bin', 'VENV': str(tmp_path / 'fresh-venv')}
    out = subprocess.run(['bash', str(ROOT / 'tools' / 'install.sh'), '--plan', *layers], env=env,
                         capture_output=True, text=True, check=True).stdout
    return out


def test_make_demo_installs_no_openmmlab_package(tmp_path):
    """On a fresh clone (no .venv) the demo's install plan is the core layer only (no OpenMMLab package, no
    Slurm); the test command's plan includes the OpenMMLab and Slurm layers. And the demo's code imports
    nothing of OpenMMLab."""
    dry = subprocess.run(['make', '-n', 'demo', f'VENV={tmp_path / "fresh-venv"}'], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    calls = re.findall(r'tools/install.sh\s+(\S+)', dry)
    assert calls == ['core'], dry
    core = _plan(tmp_path, *calls)
    assert 'torch==' in core and 'timm==' in core
    assert not any(re.search(rf'\b{name}==', core) for name in OPENMMLAB), core
    test_calls = re.findall(r'tools/install.sh\s+(\S+)', subprocess.run(
        ['make', '-n', 'test', f'VENV={tmp_path / "fresh-venv"}'], cwd=ROOT, capture_output=True, text=True,
        check=True).stdout)
    assert test_calls == ['openmmlab', 'slurm']
    full = _plan(tmp_path, 'openmmlab')
    assert 'mmcv==2.1.0' in full and 'mmdet==' in full and 'built from source' in full and 'slurm' not in full
    assert re.fullmatch(r'slurm: (installed on this machine \(nothing to do\)|skipped: .+; the Slurm tests will be '
                        r'skipped|apt-get install slurmctld slurmd slurm-client munge \(no daemon started\))\n',
                        _plan(tmp_path, 'slurm'))
    code = ('import sys, runpy; sys.argv = ["classification.py", "--help"]\n'
            'try:\n    runpy.run_path("classification.py", run_name="__main__")\nexcept SystemExit:\n    pass\n'
            'import src.train.run, src.train.digits, src.classification\n'
            f'bad = sorted(m for m in sys.modules if m.split(".")[0] in {OPENMMLAB!r})\n'
            'print(bad); sys.exit(bool(bad))')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, capture_output=True)


def test_install_rejects_an_unknown_layer(tmp_path):
    proc = subprocess.run(['bash', str(ROOT / 'tools' / 'install.sh'), 'everything'], capture_output=True,
                          text=True, env={'PATH': '/usr/bin:/bin', 'VENV': str(tmp_path / 'v')})
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1 and "unknown layer 'everything'" in proc.stderr
    assert not (tmp_path / 'v').exists()


@pytest.mark.parametrize('argv,prog', [
    (['classification.py', '/nowhere', '--model', 'convmlp_s'], 'classification.py'),
    (['tools/predict.py', '/nowhere.png', '--random'], 'predict.py'),
    (['tools/cam.py', '/nowhere.png', '--random'], 'cam.py'),
    (['tools/make_shapes.py', '/tmp/x', '--objects', '0-3'], 'make_shapes.py'),
    (['detection/train.py', 'configs/detection/retinanet_convmlp_s_fpn_1x_coco.py', '--data-root', '/nowhere'],
     'detection/train.py'),
])
def test_one_error_line_format_everywhere(argv, prog):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith(f'{prog}: error: '), proc.stderr
