"""Transfer in miniature (issue 15): the shapes crops, the pretrained configs loading a classification run's
checkpoint through init_cfg, the whole workflow end to end on a tiny setting, and the prediction
pictures (detection/demo.py, segmentation/demo.py, tools/predict.py)."""
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

from dense_e2e import ROOT, run  # noqa: E402
from helpers import load_tool  # noqa: E402
from src.studies.shapes import CLASSES, make_shapes  # noqa: E402
from src.weights import CheckpointError  # noqa: E402

PRETRAINED = {
    'retinanet': ('configs/detection/shapes/retinanet_convmlp_s_fpn_shapes_pretrained.py', 'mmdet'),
    'maskrcnn': ('configs/detection/shapes/maskrcnn_convmlp_s_fpn_shapes_pretrained.py', 'mmdet'),
    'fpn': ('configs/segmentation/shapes/fpn_convmlp_s_shapes_pretrained.py', 'mmseg'),
}


def _run_checkpoint(path, seed=0):
    """A checkpoint laid out as classification.py saves its best.pth.tar: a 3-class ConvMLP-S (timm's
    model, with norm and head), its optimizer, arguments and class names."""
    import timm
    import src.classification  # noqa: F401  registers convmlp_s in timm
    torch.manual_seed(seed)
    model = timm.create_model('convmlp_s', num_classes=len(CLASSES))
    state = dict(format='convmlp-train-1', arch='convmlp_s', num_classes=3, classes=list(CLASSES),
                 state_dict=model.state_dict(), state_dict_ema=None, optimizer={'state': {}, 'param_groups': []},
                 args=dict(model='convmlp_s', img_size=32, crop_pct=1.0, dataset='', data_dir='nowhere'))
    torch.save(state, path)
    return model.state_dict()


def _built(config, scope, checkpoint):
    """The model of ``config`` with its backbone pointed at ``checkpoint`` the way a user does it
    (``--cfg-options model.backbone.init_cfg.checkpoint=PATH``), weights initialised."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(ROOT / config))
    cfg.merge_from_dict({'model.backbone.init_cfg.checkpoint': str(checkpoint)})
    init_default_scope(scope)
    model = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS.build(cfg.model)
    model.init_weights()
    return model


# ---- data ----------------------------------------------------------------------------------------
def test_crops_are_an_imagefolder_of_other_scenes(tmp_path):
    root = make_shapes(tmp_path / 's', num_train=3, num_val=2, size=(64, 48), crops=(6, 3), crop_size=32)
    done = json.loads((root / 'cls' / '.complete').read_text())
    assert done['classes'] == list(CLASSES)
    for split in ('train', 'validation'):
        files = {c: sorted((root / 'cls' / split / c).glob('*.png')) for c in CLASSES}
        assert [len(files[c]) for c in CLASSES] == done['counts'][split] and all(files.values())
        for f in files[CLASSES[0]]:
            with Image.open(f) as im:
                assert im.size == (32, 32) and im.mode == 'RGB'
    crops = [np.asarray(Image.open(f)) for f in (root / 'cls').rglob('*.png')]
    assert len({c.tobytes() for c in crops}) == len(crops)  # train and held-out crops all distinct
    # the dense scenes are the same with or without crops: crops come from their own random streams
    plain = make_shapes(tmp_path / 'p', num_train=3, num_val=2, size=(64, 48))
    for a, b in zip(sorted((plain / 'ade').rglob('*.png')), sorted((root / 'ade').rglob('*.png'))):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    with pytest.raises(FileExistsError, match='coco exists'):
        make_shapes(tmp_path / 's', num_train=1, num_val=1, size=(64, 48), crops=(1, 1))
    with pytest.raises(ValueError, match='radius range'):
        make_shapes(tmp_path / 'r', radius=(0.3, 0.2))


def test_shapes_cli_bad_ranges_are_one_line(tmp_path, capsys):
    main = load_tool('make_shapes').main
    assert main([str(tmp_path / 'x'), '--objects', '0-3']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'objects range must satisfy 1 <= low <= high' in err, err
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / 'x'), '--radius', 'big'])
    assert exit_.value.code == 2 and "expected MIN-MAX like 0.1-0.3; got 'big'" in capsys.readouterr().err
    assert main([str(tmp_path / 'x'), '--crop-context', '2']) == 2
    assert capsys.readouterr().err.endswith('error: --crop-context needs --crops TRAIN VAL (it changes the crops)\n')
    assert main([str(tmp_path / 'x'), '--crops', '1', '1', '--crop-context', '0.5']) == 2
    assert 'crop context must be at least 1' in capsys.readouterr().err
    assert not (tmp_path / 'x' / 'cls').exists()


# ---- the classification checkpoint as the dense backbones' init_cfg -----------------------------
def test_pretrained_configs_load_every_backbone_key_of_a_classification_run(tmp_path):
    path = tmp_path / 'best.pth.tar'
    reference = _run_checkpoint(path)
    backbone_keys = [k for k in reference if not k.startswith(('norm.', 'head.'))]
    for name, (config, scope) in PRETRAINED.items():
        model = _built(config, scope, path)
        own = model.backbone.state_dict()
        assert sorted(own) == sorted(backbone_keys), name
        for k, v in own.items():
            assert torch.equal(v, reference[k]), (name, k)
    # the scratch twin differs only in init_cfg
    from mmengine.config import Config
    a = Config.fromfile(str(ROOT / PRETRAINED['fpn'][0])).to_dict()
    b = Config.fromfile(str(ROOT / PRETRAINED['fpn'][0].replace('_pretrained', '_scratch'))).to_dict()
    assert a['model']['backbone'].pop('init_cfg')['type'] == 'Pretrained' and b['model']['backbone'].pop('init_cfg') is None
    assert a == b

    partial = {k: v for k, v in reference.items() if k != 'stages.0.blocks.1.connect.weight'}
    torch.save({'state_dict': partial}, path)
    with pytest.raises(CheckpointError, match='1 missing keys'):
        _built(*PRETRAINED['retinanet'], path)


def test_table_and_curves(tmp_path):
    from src.studies import transfer as T
    pre = dict(top1=97.5, wall_s=61, epochs=2, curve=[(1, 60.), (2, 97.5)])
    curve = lambda v: [dict(step=1, bbox_AP=v / 2, bbox_AP50=v, mask_AP=v / 3, mIoU=v)]  # noqa: E731
    results = {(r.name, i): dict(final=curve(50. if i == 'pretrained' else 10.)[-1], curve=curve(50.), wall_s=125)
               for r in T.RUNS for i in T.INITS}
    md = T.table(results, pre)
    lines = md.splitlines()
    assert lines[0] == 'Pretraining: ConvMLP-S on the crops, held-out top-1 97.5 (best of 2 epochs), 1 min 01 s.'
    assert lines[2] == '| model | backbone | bbox AP | bbox AP50 | mask AP | mIoU | wall time |'
    assert '| RetinaNet-S | pretrained on the crops | **25.0** | **50.0** | - | - | 2 min 05 s |' in md
    assert '| Mask R-CNN-S | scratch | 5.0 | 10.0 | 3.3 | - | 2 min 05 s |' in md
    assert '| Semantic FPN-S | pretrained on the crops | - | - | - | **50.0** |' in md
    assert len(lines) == 2 + 2 + 6
    png = T.plot_curves(results, pre, tmp_path / 'c.png')
    assert Image.open(png).size[0] > 4 * Image.open(png).size[1] / 2
    readme = tmp_path / 'README.md'
    readme.write_text(f'a\n{T.README_START}\nold\n{T.README_END}\nb\n')
    assert T.update_readme(readme, md)
    assert readme.read_text() == f'a\n{T.README_START}\n{md}\n{T.README_END}\nb\n'


# ---- the workflow end to end ---------------------------------------------------------------------
@pytest.mark.slow
def test_transfer_smoke_end_to_end(tmp_path):
    """tools/transfer.py --smoke: data, classification pretraining (2 processes), RetinaNet-S with that
    checkpoint as init_cfg (2 processes), table, curves, picture; a second call reuses the finished run.
    (Semantic FPN-S and Mask R-CNN-S's pretrained configs load the same way:
    test_pretrained_configs_load_every_backbone_key...)"""
    out = tmp_path / 'out'
    proc = run([sys.executable, ROOT / 'tools/transfer.py', '--smoke', '--out', out, '--models', 'retinanet',
                '--inits', 'pretrained'], timeout=900)
    assert proc.returncode == 0, proc.out[-6000:]
    pre = out / 'pretrain'
    ckpt = torch.load(pre / 'best.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['classes'] == list(CLASSES)
    log = (out / 'logs' / 'pretrain.log').read_text()
    assert 'img/s ETA epoch' in log and f'outputs in {pre}' in log
    n_backbone = len([k for k in ckpt['state_dict'] if not k.startswith(('norm.', 'head.'))])
    text = (out / 'logs' / 'retinanet_pretrained.log').read_text()
    assert f'DetConvMLPSmall: loaded all {n_backbone} backbone tensors from {pre / "best.pth.tar"}' in text
    assert f'done: outputs in {out / "retinanet_pretrained"}' in text  # each dense run ends saying where
    result = json.loads((out / 'retinanet_pretrained' / 'transfer_result.json').read_text())
    assert result['curve'] and result['backbone'].startswith(f'loaded all {n_backbone}')
    md = (out / 'transfer.md').read_text()
    assert '| RetinaNet-S | pretrained on the crops |' in md and 'Semantic FPN-S' not in md
    assert 'cores (AVX' in md or 'cores (' in md
    assert (out / 'transfer_curves.png').is_file()
    with Image.open(out / 'predictions' / 'detection.png') as im:
        assert im.size == (64 * 2 + 4, 64 * 2 + 4)  # input | prediction, one row per held-out scene (2)
    assert f'runs in {out}' in proc.stdout.splitlines()[-1]
    again = run([sys.executable, ROOT / 'tools/transfer.py', '--smoke', '--out', out, '--models', 'retinanet',
                 '--inits', 'pretrained', '--quiet'])
    assert again.returncode == 0 and 'retinanet pretrained: reusing the finished run' in again.stdout, again.out


def _exit_code(main, argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def test_transfer_cli_bad_input_is_one_line(tmp_path, capsys):
    main = load_tool('transfer').main
    for args, message in ((['--models', 'yolo'], 'unknown model yolo in --models: choose from retinanet, maskrcnn, fpn'),
                          (['--inits', 'imagenet'], '--inits takes scratch and/or pretrained'),
                          (['--readme', tmp_path / 'nope.md'], 'README to update not found')):
        assert _exit_code(main, ['--out', tmp_path / 'o', *args]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and message in err, err
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'mine.txt').write_text('keep me')
    assert _exit_code(main, ['--out', tmp_path / 'o', '--data', tmp_path / 'data']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is not a transfer data folder' in err
    assert (tmp_path / 'data' / 'mine.txt').read_text() == 'keep me'


# ---- pictures ------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def random_checkpoints(tmp_path_factory):
    """Random-weight RetinaNet-S and Semantic FPN-S checkpoints (mmengine layout) and two 80x60 scenes."""
    from dense_e2e import build_model
    tmp = tmp_path_factory.mktemp('demo')
    files = {}
    for name in ('retinanet', 'fpn'):
        config, scope = PRETRAINED[name]
        model = build_model(config, scope)
        files[name] = tmp / f'{name}.pth'
        torch.save({'meta': {}, 'state_dict': model.state_dict()}, files[name])
    root = make_shapes(tmp / 'shapes', num_train=1, num_val=2, size=(80, 60))
    files['images'] = sorted(str(p) for p in (root / 'coco' / 'val2017').glob('*.jpg'))
    return files


@pytest.mark.parametrize('task,name', [('detection', 'retinanet'), ('segmentation', 'fpn')])
def test_demo_writes_a_png_of_the_input_size(task, name, random_checkpoints, tmp_path, capsys):
    from src.mm.demo import main
    config = str(ROOT / PRETRAINED[name][0])
    images = random_checkpoints['images']
    assert main(task, [config, str(random_checkpoints[name]), *images, '--out', str(tmp_path / 'out')]) == 0
    for path in images:
        with Image.open(tmp_path / 'out' / (path.rsplit('/', 1)[1][:-4] + '.png')) as im:
            assert im.size == (80, 60) and im.format == 'PNG'
            drawn = np.asarray(im.convert('RGB')).astype(int)
        if task == 'segmentation':  # the class map is drawn over the image: it changed
            assert np.abs(drawn - np.asarray(Image.open(path).convert('RGB')).astype(int)).mean() > 1
    assert f'done: 2 picture(s) in {tmp_path / "out"}' in capsys.readouterr().out
    if task == 'detection':  # nothing scores above 1: the picture is the input, in RGB (not BGR) order
        assert main(task, [config, str(random_checkpoints[name]), images[0], '--out', str(tmp_path / 'none'),
                           '--score-thr', '1.01']) == 0
        picture = np.asarray(Image.open(tmp_path / 'none' / (images[0].rsplit('/', 1)[1][:-4] + '.png')), dtype=int)
        rgb = np.asarray(Image.open(images[0]).convert('RGB'), dtype=int)  # (matplotlib's canvas resamples a bit)
        assert np.abs(picture - rgb).mean() < np.abs(picture - rgb[..., ::-1]).mean() / 3

    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'not an image')
    other = PRETRAINED['fpn' if task == 'detection' else 'retinanet'][0]
    for argv, message in (([config, str(random_checkpoints[name]), str(tmp_path / 'missing.jpg')], 'image not found'),
                          ([config, str(random_checkpoints[name]), str(bad)], 'cannot read image'),
                          ([str(ROOT / other), str(random_checkpoints[name]), images[0]], f'is not a {task} config'),
                          ([str(tmp_path / 'no.py'), str(random_checkpoints[name]), images[0]], 'config not found'),
                          ([config, str(bad), images[0]], 'cannot read checkpoint')):
        assert main(task, [*argv, '--out', str(tmp_path / 'x')]) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and err.startswith(f'{task}/demo.py: error: ') and message in err, err
    assert not (tmp_path / 'x').exists()


@pytest.mark.parametrize('task', ['detection', 'segmentation'])
def test_demo_script_exit_code(task, tmp_path):
    proc = run([sys.executable, ROOT / task / 'demo.py', ROOT / PRETRAINED['fpn'][0], tmp_path / 'c.pth',
                tmp_path / 'missing.png'])
    assert proc.returncode == 2 and proc.stderr == f'{task}/demo.py: error: image not found: {tmp_path / "missing.png"}\n'


def test_predict_top5_with_names(tmp_path, random_checkpoints, capsys):
    main = load_tool('predict').main
    path = tmp_path / 'best.pth.tar'
    _run_checkpoint(path)
    image = random_checkpoints['images'][0]
    assert _exit_code(main, [image, '--checkpoint', path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f'convmlp_s, weights: {path}; 3 classes, names from the class folders of the run')
    assert 'input 32x32' in lines[0] and lines[1] == image
    ranked = lines[2:]
    assert len(ranked) == 3 and {ln.split()[2] for ln in ranked} == set(CLASSES)
    probs = [float(ln.split()[1][:-1]) for ln in ranked]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 100) < 0.5

    assert _exit_code(main, [image, '--random']) == 0
    out = capsys.readouterr().out
    assert 'names from ImageNet-1k (timm.data.ImageNetInfo)' in out and 'input 224x224' in out
    assert len(out.splitlines()) == 7 and 'tench, Tinca tinca' not in out.splitlines()[0]
    for args, message in (([tmp_path / 'nope.png', '--random'], 'image not found'),
                          ([image, '--checkpoint', tmp_path / 'nope.pth'], 'checkpoint not found')):
        assert _exit_code(main, args) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and message in err, err
    proc = run([sys.executable, ROOT / 'tools/predict.py', tmp_path / 'nope.png', '--random'])
    assert proc.returncode == 2 and proc.stderr == f'predict.py: error: image not found: {tmp_path / "nope.png"}\n'
