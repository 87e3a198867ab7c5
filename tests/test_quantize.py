"""int8 deployment: tools/quantize.py end to end on a model trained for real (the digits demo), the headless
backbone, the pieces (graph groups, calibration split, fidelity), and every bad input (one line, exit 2,
nothing at the output path)."""
import io
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from classification_helpers import make_image_folder, run
from conftest import ROOT, THREADS
from helpers import load_tool, randomize_norms, tiny_convmlp
from src.convmlp import convmlp_m, convmlp_s, convmlp_s_pure_mlp
from src.deploy import quantize as q
from src.deploy.export import onnx_bytes, onnx_session
from src.deploy.fidelity import Fidelity
from src.deploy.int8_build import check_disjoint, held_out_labels, split_calibration
from src.deploy.metadata import onnx_with_metadata, serving_metadata
from src.deploy.metadata import read as read_metadata
from src.utils.errors import UsageError
from src.utils.images import list_image_folder

quantize_tool = load_tool('quantize')

# the digits demo's model quantized with the default recipe keeps 99.7% top-1 agreement on the 360 held-out
# digits (docs/deployment.md); the test allows for another machine's training run landing elsewhere
MIN_HELD_OUT_AGREEMENT = 98.0
MAX_TOP1_CHANGE = 1.5            # points of held-out top-1, int8 against fp32
MIN_DENSE_COSINE = 0.99          # mean cosine of each dense map, int8 against fp32


# ---- a small model trained for real: the digits demo --------------------------------------------------

@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    """The demo's run (configs/classification/demo_digits.yml: ConvMLP-S from scratch, 3 epochs at 32 px) on
    the digits ImageFolder: (data root, best checkpoint)."""
    from src.train.digits import write_digits_imagefolder
    tmp = tmp_path_factory.mktemp('digits')
    data = write_digits_imagefolder(tmp / 'data')
    proc = run([data, '-c', 'configs/classification/demo_digits.yml', '--output', tmp / 'out',
                '--experiment', 'demo'], env={'OMP_NUM_THREADS': str(THREADS)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return data, tmp / 'out' / 'demo' / 'best.pth.tar'


@pytest.mark.slow
def test_trained_digits_model_quantized_end_to_end(digits_run, tmp_path, capsys):
    """The default recipe on the demo's model: the int8 file loads in ONNX Runtime with dynamic batch, agrees
    with fp32 on the held-out digits above MIN_HELD_OUT_AGREEMENT, and the reports say what was done."""
    data, checkpoint = digits_run
    out = tmp_path / 'exports' / 'digits_int8.onnx'
    assert quantize_tool.main(['--checkpoint', str(checkpoint), '--calibration-dir', str(data / 'train'),
                               '--calibration-images', '128', '--check-images', '128',
                               '--eval-dir', str(data / 'validation'), '--out', str(out)]) == 0
    stdout = capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ['digits_int8.onnx', 'digits_int8.report.json',
                                                           'digits_int8.report.md']
    session = onnx_session(str(out))
    assert [o.name for o in session.get_outputs()] == ['logits']
    for batch in (1, 5):
        logits = session.run(None, {'image': np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32)})[0]
        assert logits.shape == (batch, 10)

    report = json.loads(out.with_name('digits_int8.report.json').read_text())
    held_out = report['evaluation']['result']
    print(f"held-out: top-1 fp32 {held_out['top1_fp32']:.2f}, int8 {held_out['top1_int8']:.2f}, agreement "
          f"{held_out['top1_agreement']:.2f}% (threshold {MIN_HELD_OUT_AGREEMENT}%)", file=sys.stderr)
    assert held_out['images'] == held_out['labelled'] == 360
    assert held_out['top1_agreement'] >= MIN_HELD_OUT_AGREEMENT
    assert abs(held_out['top1_int8'] - held_out['top1_fp32']) <= MAX_TOP1_CHANGE
    assert held_out['top1_fp32'] > 80  # a trained model, not chance
    assert 0 < held_out['max_logit_diff'] < held_out['logit_range']
    build = report['build']
    assert build['keep_fp32'] in ('first_conv', 'tokenizer', 'stem') and build['attempts'][-1]['meets_target']
    assert build['fp32_nodes'] and build['ops']['fp32']['Conv'] == len(build['fp32_nodes'])
    assert build['ops']['int8']['MatMul'] == 32 and build['ops']['int8']['Gemm'] == 1  # channel MLPs, head
    assert build['quantize_static_args']['per_channel'] is True
    assert len(report['calibration']['images']) == 128 and report['calibration']['check_images'] == 128
    assert not set(report['calibration']['images']) & {str(p) for p in (data / 'validation').rglob('*.png')}
    assert report['files']['int8_mib'] < report['files']['fp32_mib'] / 3
    markdown = out.with_name('digits_int8.report.md').read_text()
    assert 'kept in fp32' in markdown and '| 360 |' in markdown
    assert f"wrote {out}" in stdout and 'top-1 agreement' in stdout

    # the file says what a service needs: the run's class folders, its preprocessing
    meta = read_metadata(out)
    assert meta['classes'] == sorted(p.name for p in (data / 'train').iterdir()) and meta['outputs'] == ['logits']
    assert meta['arch'] == 'convmlp_s' and str(checkpoint) in meta['weights']
    assert meta['preprocessing']['input_size'] == [3, 32, 32] and len(meta['preprocessing']['std']) == 3
    # served from the file alone: tools/predict.py --onnx, one held-out digit of each class
    images = [str(sorted((data / 'validation' / name).iterdir())[0]) for name in meta['classes']]
    assert load_tool('predict').main([*images, '--onnx', str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('ONNX, weights: ') and f'10 classes, names from the metadata of {out}' in lines[0]
    top1 = [lines[2 + 6 * i].split()[2] for i in range(len(images))]  # per image: its path, then 5 ranked lines
    assert sum(name == expected for name, expected in zip(top1, meta['classes'])) >= 8, top1


@pytest.mark.slow
def test_headless_backbone_quantized(digits_run, tmp_path, capsys):
    """--headless: the four dense maps out, each within MIN_DENSE_COSINE of fp32 on the held-out digits."""
    data, checkpoint = digits_run
    out = tmp_path / 'features_int8.onnx'
    assert quantize_tool.main(['--checkpoint', str(checkpoint), '--headless', '--calibration-dir',
                               str(data / 'train'), '--calibration-images', '64', '--check-images', '64',
                               '--eval-dir', str(data / 'validation'), '--out', str(out)]) == 0
    session = onnx_session(str(out))
    maps = session.run(None, {'image': np.zeros((2, 3, 64, 96), np.float32)})
    assert [o.name for o in session.get_outputs()] == ['feature_s4', 'feature_s8', 'feature_s16', 'feature_s32']
    assert [m.shape for m in maps] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
    report = json.loads(out.with_name('features_int8.report.json').read_text())
    cosine = report['evaluation']['result']['cosine']
    assert list(cosine) == ['feature_s4', 'feature_s8', 'feature_s16', 'feature_s32']
    assert all(c['mean'] >= MIN_DENSE_COSINE for c in cosine.values()), cosine
    assert report['model']['outputs'] == 'feature_s4, feature_s8, feature_s16, feature_s32'
    assert 'cosine' in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta['outputs'] == ['feature_s4', 'feature_s8', 'feature_s16', 'feature_s32'] and 'classes' not in meta
    assert meta['preprocessing']['input_size'] == [3, 32, 32]


@pytest.mark.slow
def test_trained_digits_model_quantized_by_pt2e(digits_run, tmp_path, capsys):
    """--backend pt2e on the demo's model: a torch.export program that loads back (dynamic batch), runs
    compiled by inductor as oneDNN int8 kernels, and agrees with fp32 on the held-out digits as the ONNX path
    must (the check and the evaluation run the written file, compiled); every channel-MLP linear and conv but
    the first is int8."""
    from src.deploy import pt2e
    data, checkpoint = digits_run
    out = tmp_path / 'digits_int8.pt2'
    assert quantize_tool.main(['--checkpoint', str(checkpoint), '--backend', 'pt2e', '--calibration-dir',
                               str(data / 'train'), '--calibration-images', '128', '--check-images', '128',
                               '--eval-dir', str(data / 'validation'), '--out', str(out)]) == 0
    report = json.loads(out.with_name('digits_int8.report.json').read_text())
    held_out = report['evaluation']['result']
    print(f"pt2e held-out: top-1 fp32 {held_out['top1_fp32']:.2f}, int8 {held_out['top1_int8']:.2f}, agreement "
          f"{held_out['top1_agreement']:.2f}%", file=sys.stderr)
    assert held_out['images'] == 360 and held_out['top1_agreement'] >= MIN_HELD_OUT_AGREEMENT
    assert abs(held_out['top1_int8'] - held_out['top1_fp32']) <= MAX_TOP1_CHANGE and held_out['top1_fp32'] > 80
    build = report['build']
    assert build['backend'] == 'pt2e' and build['fp32_nodes'] == ['tokenizer.block.0']
    assert build['ops'] == {'int8': {'conv2d': 19, 'linear': 33}, 'fp32': {'conv2d': 1}}  # + 32 MLP linears, head
    assert 'torchao' in report['versions'] and report['files']['int8_mib'] < report['files']['fp32_mib'] / 3

    graph = pt2e.load(out.read_bytes())  # the check and the evaluation above ran this program, compiled
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert graph(images).shape == (5, 10) and graph(images[:1]).shape == (1, 10)  # dynamic batch
    meta = read_metadata(out)  # stored as torch.export's extra file, read back by torch too
    assert meta['classes'] == sorted(p.name for p in (data / 'train').iterdir())
    assert meta['preprocessing']['input_size'] == [3, 32, 32]
    extra = {'convmlp.json': ''}
    torch.export.load(io.BytesIO(out.read_bytes()), extra_files=extra)
    assert json.loads(extra['convmlp.json']) == meta

    # served from the file alone: tools/predict.py --pt2, one held-out digit of each class (the program as it is:
    # int8 emulated; --compile runs it through compile_int8, as the check and the evaluation above did)
    images = [str(sorted((data / 'validation' / name).iterdir())[0]) for name in meta['classes']]
    capsys.readouterr()
    assert load_tool('predict').main([*images, '--pt2', str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('PT2, weights: ') and f'10 classes, names from the metadata of {out}' in lines[0]
    top1 = [lines[2 + 6 * i].split()[2] for i in range(len(images))]
    assert sum(name == expected for name, expected in zip(top1, meta['classes'])) >= 8, top1
    assert pt2e.pt2_classifier(out, compiled=True).model.__qualname__ == 'compile_int8.<locals>.run'


# ---- the pieces ------------------------------------------------------------------------------------

def _prepared(model, dense=False, size=64):
    return onnx.load_from_string(q.prepare(onnx_bytes(model.eval().fuse(), torch.randn(2, 3, size, size),
                                                      dense=dense)).onnx)


def test_flat_mlps_keep_outputs_and_keys():
    """PT2E's export copy: every channel MLP on a flat (B*H*W, C) view computes what the model's does, with the
    release's state-dict keys; the module groups kept in fp32 follow the architecture."""
    from src.deploy import pt2e
    from src.deploy.export import exported_module
    model = randomize_norms(convmlp_s()).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        expected = model(x)
        keys = list(model.state_dict())
        flat = pt2e.flat_mlps(model)
        assert flat is model and list(flat.state_dict()) == keys
        assert sum(type(m) is pt2e.FlatMlp for m in flat.modules()) == 16  # 8 blocks, 2 MLPs each
        torch.testing.assert_close(flat(x), expected, rtol=1e-5, atol=1e-5)
    assert pt2e.fp32_modules(model, 'first_conv') == ['tokenizer.block.0']
    assert pt2e.fp32_modules(model, 'stem') == ['tokenizer', 'conv_stages']
    assert pt2e.fp32_modules(exported_module(model, dense=True), 'tokenizer') == ['model.tokenizer']


@pytest.mark.slow
def test_pt2e_compiled_with_max_autotune_computes_the_same_model():
    """compile_int8(max_autotune=True) (tools/predict.py --compile --max-autotune): inductor's C++ int8 GEMMs,
    where they time faster than oneDNN's (AVX512-VNNI and AMX CPUs, where generating and timing them takes most
    of this test; elsewhere oneDNN's kernels are the only choice), give the program's logits within int8
    rounding and its classes."""
    from src.deploy import pt2e
    model = randomize_norms(tiny_convmlp(num_classes=10))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    int8 = pt2e.quantize(model, x.numpy())
    with torch.no_grad():
        emulated = pt2e.load(int8.data)(x)
        tuned = pt2e.compile_int8(pt2e.load(int8.data), max_autotune=True)(x)
    assert (tuned - emulated).abs().max() < 0.05 * (emulated.max() - emulated.min()).item()
    assert (tuned.argmax(1) == emulated.argmax(1)).sum() >= 7


def test_node_groups_follow_the_architecture():
    """first conv, the tokenizer's three, the stem's ten (tokenizer, S's two conv-stage bottlenecks of three,
    the downsampling conv); the same in the headless graph; a patch tokenizer's one conv."""
    for dense in (False, True):
        groups = q.node_groups(_prepared(convmlp_s(), dense))
        assert {k: len(v) for k, v in groups.items()} == dict(none=0, first_conv=1, tokenizer=3, stem=10)
        assert groups['tokenizer'][0] == groups['first_conv'][0] and set(groups['tokenizer']) < set(groups['stem'])
    groups = q.node_groups(_prepared(convmlp_s_pure_mlp()))
    assert len(groups['first_conv']) == len(groups['tokenizer']) == len(groups['stem']) == 1


def test_quantize_keeps_the_group_in_fp32_and_the_rest_in_int8():
    model = randomize_norms(convmlp_s(num_classes=5))
    prepared = _prepared(model).SerializeToString()
    calibration = np.random.default_rng(0).normal(size=(4, 3, 64, 64)).astype(np.float32)
    int8 = q.quantize(prepared, calibration, q.Recipe(keep_fp32='tokenizer'))
    ops = q.op_summary(int8.onnx)
    assert len(int8.fp32_nodes) == 3 and ops['fp32']['Conv'] == 3 and ops['int8']['Conv'] == 17
    assert ops['int8']['MatMul'] == 32 and ops['int8']['Gemm'] == 1
    assert 'LayerNormalization' not in ops['int8'] and ops['quantize_dequantize']['QuantizeLinear'] > 0
    assert int8.quantize_static_args['nodes_to_exclude'] == int8.fp32_nodes
    with pytest.raises(ValueError, match='keep_fp32'):
        q.Recipe(keep_fp32='head')


def test_fidelity_of_logits_and_maps():
    fp32 = np.array([[2., 1., 0.], [0., 3., 1.], [1., 0., 0.5]])
    int8 = np.array([[1.9, 1.2, 0.], [0., 2.5, 2.6], [1., 0., 0.5]])
    fidelity = Fidelity(['logits'])
    fidelity.update([fp32[:2]], [int8[:2]], np.array([0, 2]))
    fidelity.update([fp32[2:]], [int8[2:]], np.array([-1]))
    result = fidelity.result()
    assert result['images'] == 3 and result['labelled'] == 2
    assert result['top1_agreement'] == pytest.approx(200 / 3) and result['max_logit_diff'] == pytest.approx(1.6)
    assert result['top1_fp32'] == 50 and result['top1_int8'] == 100 and result['logit_range'] == 3
    maps = Fidelity(['feature_s4', 'feature_s8'])
    a = np.random.default_rng(0).normal(size=(2, 4, 3, 3))
    maps.update([a, a], [a, -a])
    cosine = maps.result()['cosine']
    assert cosine['feature_s4'] == pytest.approx(dict(mean=1, min=1)) and cosine['feature_s8']['mean'] == pytest.approx(-1)


def test_predict_runs_an_onnx_file_by_its_metadata(tmp_path, capsys):
    """tools/predict.py --onnx: the class names and preprocessing come from the file's metadata, and its
    probabilities are the eager model's on the image preprocessed that way. A file without metadata, one of
    dense maps, a missing one, and --onnx beside --checkpoint: one line each, exit code 2."""
    from PIL import Image
    from src.model_options import preprocess
    predict = load_tool('predict')
    torch.manual_seed(0)
    model = randomize_norms(convmlp_s(num_classes=3)).eval()
    data_cfg = dict(input_size=(3, 48, 48), interpolation='bilinear', crop_pct=1.0, mean=(0.5,) * 3,
                    std=(0.25,) * 3)
    fp32 = onnx_bytes(model, torch.randn(1, 3, 48, 48))
    names = ['cat', 'dog', 'emu']
    good = tmp_path / 'clf.onnx'
    good.write_bytes(onnx_with_metadata(fp32, serving_metadata('convmlp_s', 'random', ['logits'], data_cfg, names)))
    image = tmp_path / 'x.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(image)

    assert predict.main([str(image), '--onnx', str(good)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f'ONNX, weights: {good} (convmlp_s, random); 3 classes, names from the metadata of {good}; '
                        f'input 48x48')
    with torch.no_grad():
        expected = model(preprocess([np.asarray(Image.open(image))], data_cfg)).softmax(-1)[0]
    ranked = [line.split() for line in lines[2:]]
    assert [r[2] for r in ranked] == [names[i] for i in expected.argsort(descending=True)]
    assert [float(r[1][:-1]) for r in ranked] == pytest.approx(
        (100 * expected.sort(descending=True)[0]).tolist(), abs=0.051)
    assert read_metadata(good)['preprocessing'] == dict(
        input_size=[3, 48, 48], interpolation='bilinear', crop_pct=1.0, mean=[0.5] * 3, std=[0.25] * 3,
        transform=read_metadata(good)['preprocessing']['transform'])

    plain, dense, garbage = tmp_path / 'plain.onnx', tmp_path / 'dense.onnx', tmp_path / 'garbage.onnx'
    plain.write_bytes(fp32)
    garbage.write_bytes(b'not a model')
    dense.write_bytes(onnx_with_metadata(fp32, serving_metadata('convmlp_s', 'random', ['feature_s4'], data_cfg)))
    for args, message in (([str(image), '--onnx', str(plain)], 'holds no ConvMLP metadata'),
                          ([str(image), '--onnx', str(dense)], "outputs a backbone's dense maps (feature_s4)"),
                          ([str(image), '--onnx', str(garbage)], f'{garbage} is not an ONNX model'),
                          ([str(image), '--onnx', str(tmp_path / 'nope.onnx')], 'no such file'),
                          ([str(image), '--onnx', str(good), '--checkpoint', 'x.pth'], 'drop --model/--checkpoint'),
                          ([str(image), '--onnx', str(good), '--pt2', 'x.pt2'], 'not allowed with argument --onnx'),
                          ([str(image), '--onnx', str(good), '--compile'], '--compile compiles a --pt2 program'),
                          ([str(image), '--pt2', 'x.pt2', '--max-autotune'],
                           '--max-autotune is a setting of --compile'),
                          ([str(image), '--pt2', str(good)], f'--pt2 {good}: expects a .pt2 file')):
        with pytest.raises(SystemExit) as exit_:
            predict.main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count('\n') == 1 and message in err, err
    garbage.rename(tmp_path / 'garbage.pt2')
    (tmp_path / 'garbage.ts.pt').write_bytes(b'not a model')
    for path, message in ((tmp_path / 'garbage.pt2', 'is not a torch.export archive'),
                          (tmp_path / 'garbage.ts.pt', 'is not a TorchScript archive'),
                          (image, 'a deployed model is a .onnx, .pt2 or .ts.pt file')):
        with pytest.raises(ValueError, match=message):
            read_metadata(path)


def test_calibration_split_and_labels(tmp_path):
    folder = list_image_folder(make_image_folder(tmp_path / 'data', classes=3, train=10, val=4) / 'train')
    assert folder.classes == ['c0', 'c1', 'c2'] and len(folder.paths) == 30 and folder.labels[-1] == 2
    split = split_calibration(folder, calibration=100, check=20, seed=0)
    assert len(split.check) == 10 and len(split.calibration) == 20  # the check slice: at most a third
    assert not set(split.check) & set(split.calibration)
    assert split_calibration(folder, 100, 20, seed=0) == split != split_calibration(folder, 100, 20, seed=1)
    with pytest.raises(UsageError, match='shares 30 images with the calibration folder'):
        check_disjoint(folder, folder)
    held_out = list_image_folder(tmp_path / 'data' / 'validation')
    check_disjoint(folder, held_out)
    labels, how = held_out_labels(held_out, ['c2', 'c1', 'c0'])
    assert list(labels[:4]) == [2, 2, 2, 2] and 'by name' in how
    labels, how = held_out_labels(held_out, ['class 0', 'class 1', 'class 2'])
    assert list(labels[-4:]) == [2, 2, 2, 2] and 'sorted order' in how
    assert held_out_labels(held_out, [str(i) for i in range(10)])[0] is None


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------------

@pytest.fixture(scope='module')
def small_inputs(tmp_path_factory):
    """A random-weight ConvMLP-S checkpoint of 3 classes, a ConvMLP-M one, a head-less file, image folders."""
    tmp = tmp_path_factory.mktemp('inputs')
    torch.save(convmlp_s(num_classes=3).state_dict(), tmp / 's.pth')
    torch.save(convmlp_m(num_classes=3).state_dict(), tmp / 'm.pth')
    torch.save(convmlp_s(classifier_head=False).state_dict(), tmp / 'backbone.pth')
    make_image_folder(tmp / 'data', classes=3, train=4, val=2)
    (tmp / 'empty' / 'c0').mkdir(parents=True)
    (tmp / 'not_a_folder').write_text('x')
    return tmp


BAD = {
    'missing calibration folder': (['--checkpoint', 's.pth', '--calibration-dir', 'nowhere'],
                                   'image folder not found: '),
    'empty calibration folder': (['--checkpoint', 's.pth', '--calibration-dir', 'empty'], 'no images in '),
    'unknown model': (['--model', 'convmlp_xl', '--random', '--calibration-dir', 'data/train'],
                      "argument --model: invalid choice: 'convmlp_xl'"),
    'checkpoint of another size': (['--model', 'convmlp_s', '--checkpoint', 'm.pth', '--calibration-dir',
                                    'data/train'], 'does not fit this model'),
    'checkpoint without a head': (['--checkpoint', 'backbone.pth', '--calibration-dir', 'data/train'],
                                  'has no classifier head'),
    'missing checkpoint': (['--checkpoint', 'nope.pth', '--calibration-dir', 'data/train'], 'checkpoint not found'),
    'held-out images among the calibration ones': (['--checkpoint', 's.pth', '--calibration-dir', 'data',
                                                    '--eval-dir', 'data/validation'], 'shares 6 images'),
    'output not writable': (['--checkpoint', 's.pth', '--calibration-dir', 'data/train', '--out',
                             'not_a_folder/int8.onnx'], 'is not a writable folder'),
    'output not .onnx': (['--checkpoint', 's.pth', '--calibration-dir', 'data/train', '--out', 'out/int8.bin'],
                         'ending in .onnx'),
    'pt2e output not .pt2': (['--checkpoint', 's.pth', '--backend', 'pt2e', '--calibration-dir', 'data/train',
                              '--out', 'out/int8.onnx'], 'of --backend pt2e needs a file name ending in .pt2'),
    'negative count': (['--checkpoint', 's.pth', '--calibration-dir', 'data/train', '--calibration-images', '0'],
                       '--calibration-images must be >= 1'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, small_inputs, capsys, monkeypatch):
    argv, message = BAD[case]
    monkeypatch.chdir(small_inputs)
    monkeypatch.setattr(sys, 'argv', ['tools/quantize.py'])  # the program name of the error line
    before = sorted(p.relative_to(small_inputs) for p in small_inputs.rglob('*'))
    if '--out' not in argv:
        argv = argv + ['--out', 'out/int8.onnx']
    with pytest.raises(SystemExit) as e:
        quantize_tool.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count('\n') == 1 and err.startswith('quantize.py: error: ') and message in err, err
    assert sorted(p.relative_to(small_inputs) for p in small_inputs.rglob('*')) == before  # nothing written


def test_existing_output_is_kept(small_inputs, tmp_path, capsys):
    """An existing model (or report) at the output path stays as it was without --overwrite."""
    out = tmp_path / 'int8.onnx'
    out.write_bytes(b'earlier model')
    with pytest.raises(SystemExit) as e:
        quantize_tool.main(['--checkpoint', str(small_inputs / 's.pth'), '--calibration-dir',
                            str(small_inputs / 'data' / 'train'), '--out', str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and 'exists: pass --overwrite' in err
    assert out.read_bytes() == b'earlier model' and sorted(p.name for p in tmp_path.iterdir()) == ['int8.onnx']


def test_bad_input_from_the_command_line_is_one_line(small_inputs):
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'quantize.py'), '--checkpoint', 's.pth',
                           '--calibration-dir', 'empty'], cwd=small_inputs, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith('quantize.py: error: no images in empty'), proc.stderr
    assert not (small_inputs / 'exports').exists()


def test_missed_target_writes_nothing_and_exits_1(small_inputs, tmp_path, capsys):
    """--keep-fp32 auto widens through first conv, tokenizer and stem; when even the stem misses the target,
    the error says so and no file is written."""
    out = tmp_path / 'int8.onnx'
    code = quantize_tool.main(['--checkpoint', str(small_inputs / 's.pth'), '--calibration-dir',
                               str(small_inputs / 'data' / 'train'), '--calibration-images', '3', '--check-images', '3',
                               '--min-agreement', '100.1', '--out', str(out)])
    captured = capsys.readouterr()
    assert code == 1 and 'misses the target on the check slice' in captured.err and captured.err.count('\n') == 1
    assert [line.split(':')[1].split('(')[0].strip() for line in captured.out.splitlines() if 'kept in fp32' in line] \
        == ['first_conv', 'tokenizer', 'stem']
    assert list(tmp_path.iterdir()) == []
