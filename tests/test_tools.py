"""Research tools: complexity table (fvcore-style MACs), feature-map figure, ONNX / TorchScript export,
README model zoo table."""
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT
from helpers import load_tool
from src import zoo
from src.convmlp import ConvMLP, convmlp_s
from src.deploy.export import onnx_bytes, onnx_max_diff, onnx_session, torchscript_bytes
from src.perf.flops import count_macs
from src.utils.threads import torch_threads


complexity, visualize, export, zoo_table = (load_tool(n) for n in ('complexity', 'visualize', 'export', 'zoo_table'))


def _table_rows(markdown):
    """{first cell: [cells]} of the Markdown table rows (header and rule excluded)."""
    rows = [[c.strip() for c in line.strip().strip('|').split('|')] for line in markdown.splitlines()
            if line.startswith('| ') and not line.startswith('| Model')]
    return {r[0]: r for r in rows}


# ---- complexity ------------------------------------------------------------------------------------

def test_complexity_table_matches_paper(capsys):
    """S/M/L params and MACs at 224 and the fine-tuned heads' params equal the paper's to its rounding;
    MACs also equal the release's 3-digit fvcore figures."""
    assert complexity.main(['--skip-dense']) == 0
    out = capsys.readouterr().out
    assert out.startswith('| Model | Input | Params (paper) | Params (measured) | MACs (paper) |')
    assert out.splitlines()[1] == '|:---|:---|---:|---:|---:|---:|:---|'
    rows = _table_rows(out)
    for variant, (params, macs) in {'convmlp_s': ('9.023M', '2.399G'), 'convmlp_m': ('17.411M', '3.948G'),
                                    'convmlp_l': ('42.728M', '9.904G')}.items():
        row = rows[zoo.NAMES[variant]]
        assert row[1:] == ['224x224', f'{zoo.IMAGENET[variant]["params"]}M ({zoo.IMAGENET_PRECISE[variant]["params"]}M)',
                           params, f'{zoo.IMAGENET[variant]["macs"]}G ({zoo.IMAGENET_PRECISE[variant]["macs"]}G)',
                           macs, '✓']
    finetuned = [r for k, r in rows.items() if 'classes)' in k]
    assert len(finetuned) == 9 and all(r[-1] in ('✓', '✓ 2-step') for r in finetuned)
    assert rows['ConvMLP-S CIFAR-10 (10 classes)'][2:] == ['8.51M', '8.515M', '-', '-', '✓ 2-step']


def test_mark_tells_rounding_from_difference():
    assert complexity.mark(2.3994516, 2.4, 1) == complexity.mark(2.3994516, 2.399, 3) == '✓'
    assert complexity.mark(8.51505, 8.51, 2) == '✓ 2-step'  # 8.515 -> 8.51
    assert complexity.mark(37.0475, 37.1, 1) == '✓ 2-step'  # 37.05 -> 37.1 (Mask R-CNN + ConvMLP-M)
    assert complexity.mark(4.0, 3.9, 1) == '✗ differs'  # ptflops' / thop's figure for M
    assert not complexity.agrees(3.9601, 3.948, 3) and not complexity.agrees(37.04, 37.1, 1)


def test_complexity_flags_a_mismatch_and_any_size(monkeypatch, capsys):
    monkeypatch.setitem(zoo.IMAGENET_PRECISE, 'convmlp_s', dict(params=9.02, macs=2.5))
    assert complexity.model_row('convmlp_s', (224, 224))[-1] == '✗ differs'
    assert complexity.main(['--model', 'convmlp_s', '--img-size', '64x96', '--num-classes', '100']) == 0
    row = _table_rows(capsys.readouterr().out)['ConvMLP-S (100 classes)']
    assert row[1] == '64x96' and row[2] == '8.56M' and row[-1] == '✓'
    with torch.no_grad():
        assert row[5] == f'{count_macs(convmlp_s(num_classes=100), torch.zeros(1, 3, 64, 96)).total / 1e9:.3f}G'


def test_mac_counter_follows_fvcore_rules():
    """conv/linear multiply-adds, eval BatchNorm 2n, LayerNorm and GroupNorm 5n, nearest 1 and bilinear
    4 per output element, adaptive pool n_in; activations, adds and means free."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.GroupNorm(2, 8), nn.Upsample(scale_factor=2), nn.Upsample(scale_factor=2, mode='bilinear'),
                          nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.LayerNorm(72), nn.Linear(72, 10))
    model.train()
    result = count_macs(model, torch.zeros(2, 3, 4, 4))
    n = 2 * 8 * 4 * 4
    expected = {'aten.convolution': n * 27, 'aten.native_batch_norm': 2 * n, 'aten.native_group_norm': 5 * n,
                'aten.upsample_nearest2d': 4 * n, 'aten.upsample_bilinear2d': 4 * 16 * n,
                'aten._adaptive_avg_pool2d': 16 * n, 'aten.native_layer_norm': 5 * 2 * 72, 'aten.addmm': 2 * 72 * 10}
    assert result.by_operator == expected and result.total == sum(expected.values())
    assert result.by_module['0'] == n * 27 and result.by_module[''] == result.total
    assert model.training  # mode restored


def test_dense_models_params_match_paper():
    """Parameters of RetinaNet, Mask R-CNN and Semantic FPN with ConvMLP-S, built from their configs."""
    pytest.importorskip('mmdet')
    pytest.importorskip('mmseg')
    for name, paper in (('retinanet_convmlp_s_coco', zoo.RETINANET), ('maskrcnn_convmlp_s_coco', zoo.MASKRCNN),
                        ('sem_fpn_convmlp_s_ade20k', zoo.SEMANTIC_FPN)):
        model = complexity.build_from_config(ROOT / zoo.CONFIGS[name])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert complexity.agrees(params, paper['convmlp_s']['params'], 1), (name, params)


def test_complexity_cli_smoke():
    done = subprocess.run([sys.executable, str(ROOT / 'tools' / 'complexity.py'), '--model', 'convmlp_s',
                           '--img-size', '64'], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '| ConvMLP-S | 64x64 | 9.0M (9.02M) | 9.023M |' in done.stdout


def test_complexity_unknown_model_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        complexity.main(['--model', 'resnt50'])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: unknown model 'resnt50'; did you mean 'resnet50'?")


# ---- feature-map figure ----------------------------------------------------------------------------

def test_convmlp_stage_maps():
    from src.explain.feature_maps import convmlp_stage_maps
    maps = convmlp_stage_maps(convmlp_s(), torch.randn(1, 3, 64, 96))
    assert [label.split('\n')[0] for label, _ in maps] == [
        'tokenizer', 'conv stage', 'ConvMLP stage 1', 'ConvMLP stage 2', 'ConvMLP stage 3']
    assert [tuple(m.shape) for _, m in maps] == [(64, 16, 24), (64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]


def test_visualize_writes_png_grid(tmp_path, capsys):
    from PIL import Image
    from src.explain.feature_maps import figure_size_px
    out = tmp_path / 'figs' / 'fmaps.png'
    assert visualize.main(['--random', '--img-size', '64', '--channels', '3', '--compare', 'resnet18',
                           '--out', str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.format == 'PNG'
        # rows: input + tokenizer, conv stage, 3 ConvMLP stages; 3 channels; two blocks (ConvMLP, resnet18)
        assert im.size == figure_size_px(rows=6, k=3, blocks=2)
        pixels = np.asarray(im.convert('L'), dtype=np.float32)
    assert pixels.std() > 10  # drawn panels, not a blank canvas
    assert list(tmp_path.joinpath('figs').iterdir()) == [out]  # no temporary file left


def test_visualize_bad_image_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        visualize.main(['--random', '--image', str(tmp_path / 'missing.jpg'), '--out', str(tmp_path / 'x.png')])
    assert e.value.code == 2 and 'cannot read image' in capsys.readouterr().err
    assert not (tmp_path / 'x.png').exists()


# ---- export ----------------------------------------------------------------------------------------

def test_onnx_round_trip_two_sizes():
    """One export (traced at 64x64) with dynamic axes; onnxruntime agrees with eager within 1e-4 at two
    other batch sizes, heights and widths."""
    model = convmlp_s().eval()
    data = onnx_bytes(model, torch.randn(1, 3, 64, 64))
    inputs = [torch.randn(1, 3, 80, 112), torch.randn(3, 3, 128, 96)]
    diffs = onnx_max_diff(data, model, inputs)
    assert list(diffs) == [(1, 3, 80, 112), (3, 3, 128, 96)]
    assert all(d <= 1e-4 for d in diffs.values()), diffs


def test_onnx_session_threads_follow_torch():
    """Unless told, an ONNX Runtime session takes torch's thread count (OMP_NUM_THREADS where it is set), not
    ONNX Runtime's one per core: processes sharing the cores by OMP_NUM_THREADS=1 would each spin more threads."""
    data = onnx_bytes(convmlp_s(num_classes=2).eval(), torch.randn(1, 3, 32, 32))
    for threads in (1, 2):
        with torch_threads(threads):
            assert onnx_session(data).get_session_options().intra_op_num_threads == threads
            assert onnx_session(data, threads=3).get_session_options().intra_op_num_threads == 3


@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning')
def test_torchscript_equals_eager():
    model = convmlp_s(classifier_head=False).eval()
    traced = torch.jit.load(io.BytesIO(torchscript_bytes(model, torch.randn(1, 3, 64, 64))))
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:
        x = torch.randn(shape)
        with torch.no_grad():
            for got, want in zip(traced(x), model.forward_dense(x), strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.skipif(not hasattr(ConvMLP, 'fuse'), reason='ConvMLP.fuse (src/fuse.py) not in this checkout')
@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:FutureWarning')
def test_export_cli_fused_features_from_checkpoint(tmp_path, capsys):
    """tools/export.py with a local checkpoint, BatchNorm fused, feature maps out: both files written, and
    both reproduce the unfused eager model."""
    model = convmlp_s(classifier_head=False).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding them is tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), tmp_path / 'weights.pth')
    out_dir = tmp_path / 'exports'
    assert export.main(['--checkpoint', str(tmp_path / 'weights.pth'), '--fuse', '--no-head', '--img-size', '64',
                        '--check-size', '96x64', '--out-dir', str(out_dir)]) == 0
    assert len(re.findall(r'max abs diff', capsys.readouterr().out)) == 4
    assert sorted(p.name for p in out_dir.iterdir()) == ['convmlp_s_fused_features.onnx',
                                                         'convmlp_s_fused_features.ts.pt']
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = [t.numpy() for t in model.forward_dense(x)]
        traced = torch.jit.load(str(out_dir / 'convmlp_s_fused_features.ts.pt'))
        got_ts = [t.numpy() for t in traced(x)]
    session = onnx_session(str(out_dir / 'convmlp_s_fused_features.onnx'))
    got_onnx = session.run(None, {'image': x.numpy()})
    assert [o.name for o in session.get_outputs()] == ['feature_s4', 'feature_s8', 'feature_s16', 'feature_s32']
    for got in (got_ts, got_onnx):
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and np.abs(g - w).max() <= 1e-4


def test_exported_files_carry_the_runs_class_names_and_preprocessing(tmp_path, capsys):
    """The ONNX, TorchScript and torch.export files of a classification run's checkpoint hold the run's class
    names and preprocessing (src/deploy/metadata.py), so tools/predict.py --onnx, --torchscript and --pt2 rank an
    image as --checkpoint does on the eager model; a backbone's files (--no-head) name its four maps and no
    classes. The .pt2 takes any batch size and side."""
    from PIL import Image
    from src.deploy.metadata import read
    predict = load_tool('predict')
    torch.manual_seed(0)
    model = convmlp_s(num_classes=3)
    for m in model.modules():  # BatchNorm statistics away from identity: the classes' probabilities differ
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
    run = tmp_path / 'best.pth.tar'
    torch.save(dict(format='convmlp-train-1', arch='convmlp_s', num_classes=3, classes=['ant', 'bee', 'cow'],
                    state_dict=model.state_dict(), args=dict(model='convmlp_s', img_size=48, crop_pct=1.0,
                                                              interpolation='bilinear')), run)
    out_dir = tmp_path / 'exports'
    for extra in (['--format', 'onnx', 'torchscript', 'pt2'], ['--no-head']):
        assert export.main(['--checkpoint', str(run), '--num-classes', '3', '--img-size', '48', '--check-size',
                            '80x40', '--out-dir', str(out_dir), *extra]) == 0
    meta = read(out_dir / 'convmlp_s.onnx')
    assert read(out_dir / 'convmlp_s.ts.pt') == read(out_dir / 'convmlp_s.pt2') == meta
    assert read(out_dir / 'convmlp_s_features.ts.pt') == read(out_dir / 'convmlp_s_features.onnx')
    program = torch.export.load(str(out_dir / 'convmlp_s.pt2')).module()  # any batch, sides from 33 px
    with torch.no_grad():
        assert program(torch.randn(1, 3, 33, 90)).shape == (1, 3) and program(torch.randn(5, 3, 64, 48)).shape == (5, 3)
    extra_files = {'convmlp.json': ''}  # torch reads it too
    torch.jit.load(str(out_dir / 'convmlp_s.ts.pt'), _extra_files=extra_files)
    assert json.loads(extra_files['convmlp.json']) == meta
    assert meta['classes'] == ['ant', 'bee', 'cow'] and meta['outputs'] == ['logits'] and meta['weights'] == str(run)
    assert meta['preprocessing']['input_size'] == [3, 48, 48] and meta['preprocessing']['crop_pct'] == 1.0
    assert meta['preprocessing']['interpolation'] == 'bilinear'
    features = read(out_dir / 'convmlp_s_features.onnx')
    assert features['outputs'] == ['feature_s4', 'feature_s8', 'feature_s16', 'feature_s32']
    assert 'classes' not in features and features['preprocessing'] == meta['preprocessing']

    image = tmp_path / 'x.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    ranked = []
    for args in (['--checkpoint', str(run)], ['--onnx', str(out_dir / 'convmlp_s.onnx')],
                 ['--torchscript', str(out_dir / 'convmlp_s.ts.pt')], ['--pt2', str(out_dir / 'convmlp_s.pt2')]):
        capsys.readouterr()
        assert predict.main([str(image), *args]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert 'input 48x48' in lines[0] and lines[1] == str(image)
        ranked.append([line.split() for line in lines[2:]])
    eager, *deployed = ranked
    for served in deployed:
        assert [r[2] for r in served] == [r[2] for r in eager] and len(served) == 3
        assert [float(r[1][:-1]) for r in served] == pytest.approx([float(r[1][:-1]) for r in eager], abs=0.11)


def test_export_pt2_of_a_patch_merge_row_fixes_its_sides(tmp_path, capsys):
    """An ablation row with PatchMerge (padding to even sizes, which torch.export cannot keep symbolic) is
    written as a program of dynamic batch and the traced sides, and says so; headless, its four maps out."""
    assert export.main(['--model', 'convmlp_s_pure_mlp', '--random', '--no-head', '--format', 'pt2', '--img-size',
                        '96', '--out-dir', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'height and width fixed at 96x96' in out and len(re.findall(r'max abs diff', out)) == 2
    program = torch.export.load(str(tmp_path / 'convmlp_s_pure_mlp_features.pt2')).module()
    with torch.no_grad():
        assert [tuple(m.shape) for m in program(torch.randn(3, 3, 96, 96))] == [
            (3, 64, 24, 24), (3, 128, 12, 12), (3, 256, 6, 6), (3, 512, 3, 3)]
        with pytest.raises(Exception, match='Guard failed'):
            program(torch.randn(1, 3, 128, 96))


def test_export_bad_checkpoint_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        export.main(['--checkpoint', str(tmp_path / 'nope.pth'), '--out-dir', str(tmp_path / 'out')])
    assert e.value.code == 2 and 'checkpoint not found' in capsys.readouterr().err
    torch.save(convmlp_s(num_classes=10).state_dict(), tmp_path / 'cifar10.pth')
    with pytest.raises(SystemExit) as e:  # the 1000-class head would be exported untrained
        export.main(['--checkpoint', str(tmp_path / 'cifar10.pth'), '--out-dir', str(tmp_path / 'out')])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        'checkpoint head has 10 classes, the model 1000: pass --num-classes to match the checkpoint')
    with pytest.raises(SystemExit) as e:  # torch.export would fix a 32 px side
        export.main(['--random', '--format', 'pt2', '--img-size', '64', '--check-size', '32', '--out-dir',
                     str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count('\n') == 1 and '--format pt2 needs input sizes of at least 33x33' in err
    assert not (tmp_path / 'out').exists()


# ---- model zoo table -------------------------------------------------------------------------------

def test_readme_zoo_block_is_generated(capsys):
    readme = (ROOT / 'README.md').read_text() if (ROOT / 'README.md').is_file() else ''
    block = re.search(r'<!-- zoo:start -->\n(.*?)\n?<!-- zoo:end -->', readme, re.S)
    if block is None:
        pytest.skip('README.md has no <!-- zoo:start --> / <!-- zoo:end --> markers yet')
    assert zoo_table.main([]) == 0
    assert block.group(1).strip() == capsys.readouterr().out.strip(), \
        'README model zoo is stale: paste the output of `python tools/zoo_table.py` between the zoo markers'


def test_zoo_table_lists_every_checkpoint_and_config():
    table = zoo.markdown_table()
    for name in zoo.weight_names():
        assert zoo.weight_url(name, base=zoo.RELEASE_BASE) in table
    for config in zoo.CONFIGS.values():
        assert (ROOT / config).is_file(), config
        assert f'`{config}`' in table


def test_timm_pretrained_cfg_urls_are_zoos(monkeypatch):
    import timm
    import src.classification  # noqa: F401
    from timm.models import get_pretrained_cfg
    from src.convmlp import ABLATION_MODELS
    names = timm.list_models('convmlp*')
    assert len(names) == 6 + len(ABLATION_MODELS)
    for name in names:
        arch = name.replace('_classification', '')
        want = '' if name in ABLATION_MODELS else zoo.weight_url(arch, base=zoo.RELEASE_BASE)  # rows: no weights
        assert get_pretrained_cfg(name).url == want
