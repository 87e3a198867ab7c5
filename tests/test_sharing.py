"""Sharing weights: torch.hub entries, safetensors wherever a checkpoint is read, the timm / Hugging Face
folder of tools/convert.py, and mmdet 2.x release files converted for mmdet 3's own loaders."""
import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT
from helpers import load_tool
from src import zoo
from src.convmlp import convmlp_s
from src.weights import CheckpointError

convert = load_tool('convert')

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model.eval()(X)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'error: ' in err, err
    return err


@pytest.fixture(scope='module')
def ref():
    torch.manual_seed(0)
    return convmlp_s().eval()


# ---- torch.hub ------------------------------------------------------------------------------------
def test_hub_entries_are_the_names_timm_knows(monkeypatch):
    import timm

    import src.classification  # noqa: F401
    # torch.hub.list/help take GitHub repos only: this clone stands in for the downloaded one
    monkeypatch.setattr(torch.hub, '_get_cache_or_reload', lambda *args, **kwargs: str(ROOT))
    assert sorted(torch.hub.list('OWNER/REPO')) == sorted(timm.list_models('convmlp*'))
    assert '9.0M params' in torch.hub.help('OWNER/REPO', 'convmlp_s')
    assert "release's name for ``convmlp_l``" in torch.hub.help('OWNER/REPO', 'convmlp_l_classification')


def test_hub_load_random_local_file_and_release(ref, tmp_path, http_server, hub_dir, monkeypatch):
    model = torch.hub.load(str(ROOT), 'convmlp_s', source='local', num_classes=10)
    assert type(model).__name__ == 'ConvMLP' and _logits(model).shape == (2, 10)
    pth, st = tmp_path / 's.pth', tmp_path / 's.safetensors'
    torch.save({'state_dict': ref.state_dict()}, pth)
    save_file(ref.state_dict(), st)
    for path in (pth, st):
        model = torch.hub.load(str(ROOT), 'convmlp_s_classification', source='local', pretrained=str(path))
        assert torch.equal(_logits(model), _logits(ref)), path
    base, routes = http_server
    monkeypatch.setenv(zoo.BASE_ENV, base)
    routes['/convmlp_s_imagenet.pth'] = ('ok', pth.read_bytes())
    model = torch.hub.load(str(ROOT), 'convmlp_s', source='local', pretrained=True)
    assert torch.equal(_logits(model), _logits(ref))


def test_hub_entries_beside_another_src_package(ref, monkeypatch, tmp_path):
    """A user's own ``src`` package already imported: the hub loads this clone's under a private name."""
    import sys
    import types
    other = types.ModuleType('src')
    other.__file__ = str(tmp_path / 'src' / '__init__.py')
    monkeypatch.setitem(sys.modules, 'src', other)
    try:
        model = torch.hub.load(str(ROOT), 'convmlp_s', source='local')
        assert type(model).__module__ == '_convmlp_hub_src.convmlp' and sys.modules['src'] is other
        model.load_state_dict(ref.state_dict())
        assert torch.equal(_logits(model), _logits(ref))
    finally:
        for name in [n for n in sys.modules if n.startswith('_convmlp_hub_src')]:
            del sys.modules[name]


# ---- safetensors wherever a checkpoint is read ----------------------------------------------------
def test_safetensors_file_and_url_everywhere(ref, tmp_path, http_server, hub_dir):
    from src.train.state import load_weights
    st = tmp_path / 'convmlp_s.safetensors'
    save_file(ref.state_dict(), st)
    base, routes = http_server
    routes['/w/convmlp_s.safetensors'] = ('ok', st.read_bytes())
    for source in (str(st), f'{base}/w/convmlp_s.safetensors'):
        assert torch.equal(_logits(convmlp_s(pretrained=source)), _logits(ref)), source
        model = convmlp_s(num_classes=10)  # classification.py --initial-checkpoint: head left fresh
        load_weights(model, source)
        assert torch.equal(model.norm.weight, ref.norm.weight)
    assert (hub_dir / 'convmlp_s.safetensors').is_file()
    pytest.importorskip('mmdet')
    from src.detection import DetConvMLPSmall
    backbone = DetConvMLPSmall(init_cfg=dict(type='Pretrained', checkpoint=f'{base}/w/convmlp_s.safetensors'))
    backbone.init_weights()
    assert torch.equal(backbone.stages[1].blocks[0].connect.weight, ref.stages[1].blocks[0].connect.weight)


def test_truncated_safetensors_is_one_clear_error(ref, tmp_path, http_server, hub_dir, capsys):
    from src.model_options import build_model
    whole = tmp_path / 'whole.safetensors'
    save_file(ref.state_dict(), whole)
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(whole.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=f'cannot read checkpoint {cut} \\(100000 bytes\\): truncated or not '
                                              'a safetensors file'):
        convmlp_s(pretrained=str(cut))
    base, routes = http_server  # whole Content-Length, cut body: refused before it reaches the cache
    routes['/w/cut.safetensors'] = ('ok', cut.read_bytes())
    with pytest.raises(CheckpointError, match='could not fetch .*cut.safetensors .*truncated or not a safetensors'):
        convmlp_s(pretrained=f'{base}/w/cut.safetensors')
    assert not hub_dir.exists() or not any(hub_dir.iterdir())
    with pytest.raises(SystemExit) as e:  # the tools' --checkpoint
        build_model(argparse.Namespace(model='convmlp_s', random=False, checkpoint=str(cut)))
    assert e.value.code == 2 and str(cut) in _error_line(capsys)


# ---- tools/convert.py timm ------------------------------------------------------------------------
@pytest.fixture(scope='module')
def run_folders(tmp_path_factory):
    """A classification.py run's checkpoint (src/train/state.py layout) with EMA weights, converted to a
    folder from its weights and one from its EMA weights: ({'': model, '--ema': ema}, {flag: folder})."""
    tmp = tmp_path_factory.mktemp('run')
    torch.manual_seed(1)
    weights = {'': convmlp_s(num_classes=10).eval(), '--ema': convmlp_s(num_classes=10).eval()}
    run = tmp / 'best.pth.tar'
    torch.save(dict(format='convmlp-train-1', arch='convmlp_s', num_classes=10, state_dict=weights[''].state_dict(),
                    state_dict_ema=weights['--ema'].state_dict(), best=dict(epoch=3, top1=95.6),
                    position=dict(epoch=3, step=0), history=[dict(epoch=e, top1=90.0 + e, ema_top1=80.0 + e)
                                                             for e in (1, 2, 3)],
                    args=dict(model='convmlp_s', img_size=64, crop_pct=1.0, mean=(0.5, 0.5, 0.5),
                              std=(0.25, 0.25, 0.25), interpolation='bilinear')), run)
    folders = {flag: tmp / f'folder{flag}' for flag in weights}
    for flag, out in folders.items():
        assert convert.main(['timm', str(run), str(out), '--hub-id', 'me/convmlp_s_digits'] + [flag] * bool(flag)) == 0
    return weights, folders


def test_timm_folder_holds_config_weights_and_card(run_folders):
    weights, folders = run_folders
    for flag, out in folders.items():
        assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
        # model.safetensors as pretrained= of the plain model
        model = convmlp_s(pretrained=str(out / 'model.safetensors'), num_classes=10)
        assert torch.equal(_logits(model), _logits(weights[flag])), flag
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'convmlp_s' and config['num_classes'] == 10
    pcfg = config['pretrained_cfg']
    assert (pcfg['input_size'], pcfg['crop_pct'], pcfg['mean'], pcfg['interpolation']) == \
        ([3, 64, 64], 1.0, [0.5, 0.5, 0.5], 'bilinear')  # the data config the run evaluated with
    assert 'url' not in pcfg and pcfg['license'] == 'apache-2.0'
    card = (out / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and 'license: apache-2.0' in card
    assert "timm.create_model('hf-hub:me/convmlp_s_digits', pretrained=True)" in card
    assert '| ConvMLP-S | 9.0M | 2.4G | 76.8 |' in card and '| CIFAR-10 | 10 | 8.51M | 98.0 |' in card
    assert '(EMA weights)' in card and 'arxiv.org/abs/2109.04454' in card
    assert "(top-1 83.00 on the run's held-out set after epoch 3)" in card
    assert "(top-1 93.00 on the run's held-out set after epoch 3)" in (folders[''] / 'README.md').read_text()


def test_timm_local_dir_round_trip(run_folders, hub_dir, monkeypatch, tmp_path):
    import timm
    monkeypatch.setenv(zoo.BASE_ENV, str(tmp_path))  # no release download, whatever happens

    import src.classification  # noqa: F401  (what local-dir: and hf-hub: need first)
    weights, folders = run_folders
    for flag, out in folders.items():
        loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
        assert torch.equal(_logits(loaded), _logits(weights[flag])), flag
        assert tuple(timm.data.resolve_data_config(model=loaded)['input_size']) == (3, 64, 64)


def test_timm_folder_from_release_file_finds_variant(ref, tmp_path):
    release = tmp_path / 'convmlp_s_imagenet.pth'
    torch.save(ref.state_dict(), release)
    out = tmp_path / 'convmlp_s.in1k'
    assert convert.main(['timm', str(release), str(out)]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'convmlp_s' and config['num_classes'] == 1000
    assert torch.equal(_logits(convmlp_s(pretrained=str(out / 'model.safetensors'))), _logits(ref))


def test_timm_converter_bad_input_exits_2(ref, tmp_path, capsys):
    plain = tmp_path / 'plain.pth'
    torch.save(ref.state_dict(), plain)
    other = tmp_path / 'other.pth'
    torch.save({'fc.weight': torch.zeros(3, 3)}, other)
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'keep.txt').write_text('mine')
    for argv, expected in (
            ([str(tmp_path / 'nope.pth'), str(tmp_path / 'a')], 'checkpoint not found'),
            ([str(plain), str(busy)], 'is not an empty folder'),
            ([str(plain), str(tmp_path / 'b'), '--ema'], 'holds no EMA weights'),
            ([str(other), str(tmp_path / 'c')], 'not a ConvMLP-S/M/L state dict'),
            ([str(plain), str(tmp_path / 'd'), '--model', 'convmlp_m'], 'does not fit convmlp_m'),
            ([str(plain), str(tmp_path / 'e'), '--model', 'resnet50'], "unknown model 'resnet50'")):
        with pytest.raises(SystemExit) as e:
            convert.main(['timm', *argv])
        assert e.value.code == 2 and expected in _error_line(capsys), argv
    assert [p.name for p in busy.iterdir()] == ['keep.txt']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['busy', 'other.pth', 'plain.pth']  # nothing left behind


# ---- tools/convert.py mm --------------------------------------------------------------------------
def test_mmdet2_release_file_loads_in_mmdet3_init_detector(tmp_path, capsys):
    pytest.importorskip('mmdet')
    from dense_e2e import build_model
    from mmdet.apis import init_detector
    from mmengine.runner import load_checkpoint

    from src.mm.checkpoints import load_checkpoint_for_test
    from src.studies.shapes import CLASSES
    config = 'configs/detection/shapes/retinanet_convmlp_s_fpn_shapes.py'
    torch.manual_seed(2)
    trained = build_model(config, 'mmdet')
    sd = dict(trained.state_dict())  # as the release saved it: the ImageNet classifier's norm/head inside
    sd.update({'backbone.norm.weight': torch.ones(512), 'backbone.norm.bias': torch.zeros(512),
               'backbone.head.weight': torch.randn(1000, 512), 'backbone.head.bias': torch.zeros(1000)})
    legacy, out = tmp_path / 'retinanet_convmlp_s_mmdet2.pth', tmp_path / 'retinanet_convmlp_s_mmdet3.pth'
    torch.save({'meta': {'mmdet_version': '2.28.2', 'CLASSES': CLASSES, 'epoch': 12}, 'state_dict': sd}, legacy)
    assert convert.main(['mm', str(ROOT / config), str(legacy), str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {'meta', 'state_dict'} and saved['meta']['dataset_meta'] == {'classes': CLASSES}
    assert set(saved['state_dict']) == set(trained.state_dict())
    detector = init_detector(str(ROOT / config), str(out), device='cpu')  # mmdet's own loader
    assert detector.dataset_meta['classes'] == CLASSES
    load_checkpoint(build_model(config, 'mmdet'), str(out), strict=True)  # every key, nothing else
    ours = build_model(config, 'mmdet')
    load_checkpoint_for_test(str(legacy), ours, 'detection')  # detection/test.py's on-the-fly conversion
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = ours.eval()(x, mode='tensor'), detector.eval()(x, mode='tensor')
    for a, b in zip(expected, got):
        assert len(a) == len(b) == 5 and all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(SystemExit) as e:  # an existing output is never overwritten
        convert.main(['mm', str(ROOT / config), str(legacy), str(out)])
    assert e.value.code == 2 and 'exists' in _error_line(capsys)
    del sd['bbox_head.retina_cls.weight']
    torch.save({'meta': {}, 'state_dict': sd}, legacy)
    with pytest.raises(SystemExit) as e:
        convert.main(['mm', str(ROOT / config), str(legacy), str(tmp_path / 'x.pth')])
    assert e.value.code == 2 and '1 missing keys' in _error_line(capsys)
