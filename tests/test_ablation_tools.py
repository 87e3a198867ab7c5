"""The ablation's tools (issue 14, items 4 and 5): the release's figure (tools/visualize.py --figure
ablation) and the small study (tools/ablation_study.py), end to end on tiny settings, and their bad input."""
import csv
import statistics

import numpy as np
import pytest
import torch

from helpers import load_tool
from src.studies import ablation as study
from src.convmlp import convmlp_m_pure_mlp, convmlp_s, convmlp_s_pure_mlp
from src.explain.feature_maps import channel_mosaic, convmlp_stage_maps, evenly_spaced, stage_rows_size_px
from src.perf.flops import count_params


visualize, ablation_study = load_tool('visualize'), load_tool('ablation_study')


@pytest.fixture(scope='module')
def tiny_digits(tmp_path_factory):
    """4 train / 2 held-out images per class of scikit-learn's digits, written as the demo's export
    writes them (src/train/digits.py: grey 0..16 -> 0..255, bicubic to 32 px, RGB): 40 / 20 images."""
    from PIL import Image
    from sklearn.datasets import load_digits
    digits = load_digits()
    root = tmp_path_factory.mktemp('digits')
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        for split, picks in (('train', idx[:4]), ('validation', idx[4:6])):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in picks:
                grey = (digits.images[i] * (255. / 16.)).clip(0, 255).astype(np.uint8)
                Image.fromarray(grey, 'L').resize((32, 32), Image.BICUBIC).convert('RGB').save(
                    root / split / str(c) / f'{i:04d}.png')
    return root


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert 'error:' in err and all(w in err for w in words), err


# ---- the study ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_study_end_to_end_two_rows(tiny_digits, tmp_path, capsys):
    out = tmp_path / 'study'
    threads = torch.get_num_threads()
    assert ablation_study.main(['--rows', 'pure_mlp', 'convmlp', '--seeds', '1', '--epochs', '1',
                                '--data', str(tiny_digits), '--out', str(out)]) == 0
    assert torch.get_num_threads() == threads  # the study's 1 thread is undone
    assert 'curves' in capsys.readouterr().out
    with open(out / 'ablation_study.csv', newline='') as f:
        rows = {r['row']: r for r in csv.DictReader(f)}
    assert list(rows) == ['pure_mlp', 'convmlp']
    assert rows['pure_mlp']['model'] == 'convmlp_s_pure_mlp' and rows['convmlp']['model'] == 'convmlp_s'
    assert int(rows['pure_mlp']['params']) == count_params(convmlp_s_pure_mlp(num_classes=10))
    assert int(rows['convmlp']['params']) == count_params(convmlp_s(num_classes=10))
    assert round(int(rows['convmlp']['macs_224']) / 1e9, 3) == 2.399  # the paper's 2.4G (10-class head)
    assert int(rows['convmlp']['img_size']) == 32
    assert 0 < int(rows['convmlp']['macs']) < int(rows['convmlp']['macs_224'])
    for r in rows.values():
        assert r['seeds'] == '0' and r['epochs'] == '1' and r['top1_std'] == ''  # one seed: no spread
        assert 0 <= float(r['top1_mean']) <= 100 and float(r['wall_s_mean']) > 0
        run_dir = out / 'runs' / f"{r['row']}-seed0"
        with open(run_dir / 'summary.csv', newline='') as f:  # the classification.py run behind the row
            assert float(r['top1_mean']) == float(list(csv.DictReader(f))[-1]['top1'])
    md = (out / 'ablation_study.md').read_text()
    assert 'small-scale study' in md and "not the paper's ImageNet figures" in md
    assert '| Pure-MLP baseline | `convmlp_s_pure_mlp` |' in md and '| + depthwise conv (ConvMLP) | `convmlp_s` |' in md
    assert 'AVX' in md or 'NEON' in md or 'DEFAULT' in md  # the CPU's instruction set beside the times
    assert '1 torch thread(s)' in md and '40 train / 20 held-out images' in md
    assert len((out / 'runs.csv').read_text().splitlines()) == 3
    from PIL import Image
    with Image.open(out / 'ablation_study.png') as im:
        assert im.format == 'PNG' and im.size == (700, 450)


def test_study_aggregates_mean_and_sample_std_over_seeds(tmp_path):
    runs = [study.Run('conv_stage', s, 'convmlp_s_conv_stage', tmp_path, top1, 10. + s, 1.)
            for s, top1 in enumerate([[50., 80.], [60., 90.], [40., 85.]])]
    (row,) = study.aggregate(runs, num_classes=10, img_size=32)
    assert row['title'] == '+ conv stage' and row['seeds'] == [0, 1, 2]
    assert row['top1_mean'] == pytest.approx(85.) and row['top1_std'] == pytest.approx(statistics.stdev([80, 90, 85]))
    assert row['curve_mean'] == pytest.approx([50., 85.]) and row['curve_std'][0] == pytest.approx(10.)
    assert row['wall_s_mean'] == pytest.approx(11.) and row['wall_s_std'] == pytest.approx(1.)
    md = study.markdown_report([row], ['header line'])
    assert '| + conv stage | `convmlp_s_conv_stage` | 85.00 ± 5.00 | 80.00 / 90.00 / 85.00 |' in md


def test_study_unknown_row_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ablation_study.main(['--rows', 'pure_mpl', '--out', str(tmp_path / 'out')])
    assert e.value.code == 2
    _one_error_line(capsys, "unknown row 'pure_mpl'", "did you mean 'pure_mlp'")
    assert not (tmp_path / 'out').exists()


def test_study_missing_data_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ablation_study.main(['--data', str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'out')])
    assert e.value.code == 2
    _one_error_line(capsys, 'nowhere', 'omit --data')
    assert not (tmp_path / 'out').exists()


# ---- the figure --------------------------------------------------------------------------------------

def test_stage_maps_of_the_pure_mlp_baseline():
    maps = convmlp_stage_maps(convmlp_s_pure_mlp(), torch.randn(1, 3, 64, 64))
    assert [label.split('\n')[0] for label, _ in maps] == ['tokenizer', 'MLP stage 1', 'MLP stage 2', 'MLP stage 3']
    assert [m.shape[1] for _, m in maps] == [16, 8, 4, 2]  # strides 4..32: the figure's stages 1-4


def test_evenly_spaced_blocks_and_mosaic():
    assert evenly_spaced(12, 4) == [2, 5, 8, 11] and evenly_spaced(4, 4) == [0, 1, 2, 3]
    fmap = torch.zeros(8, 7, 7)
    fmap[3] = torch.arange(49.).view(7, 7)  # the most active channel
    m = channel_mosaic(fmap, 4, tile=14)  # 2x2 tiles of 14 px, 2-px gaps
    assert m.shape == (30, 30) and np.isnan(m[14]).all() and np.isnan(m[:, 14]).all()
    assert m[0, 0] == 0 and m[13, 13] == 1  # channel 3 first, scaled to [0, 1]


@pytest.mark.slow
def test_ablation_figure_end_to_end(tmp_path, capsys, monkeypatch):
    drawn = {}
    real = visualize.stage_rows_figure

    def spy(image, rows, k, title):
        drawn.update(rows=rows, k=k, title=title)
        return real(image, rows, k=k, title=title)

    monkeypatch.setattr(visualize, 'stage_rows_figure', spy)
    baseline = convmlp_m_pure_mlp().eval()  # the baseline's weights from a file, the other rows random
    torch.save(baseline.state_dict(), tmp_path / 'baseline.pth')
    out = tmp_path / 'figs' / 'fig.png'
    assert visualize.main(['--figure', 'ablation', '--random', '--img-size', '64', '--out', str(out),
                           '--baseline-checkpoint', str(tmp_path / 'baseline.pth')]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    labels = [label for label, _ in drawn['rows']]
    assert [label.split('\n')[0] for label in labels] == [
        'ResNet-50', 'MLP-Mixer-B/16', 'Pure-MLP baseline', 'ConvMLP-M']
    assert [label.split('\n')[-1] for label in labels] == [
        'random init', '(blocks as stages)', 'baseline.pth', 'random init']
    assert 'random init' in labels[1] and '(ConvMLP-M size)' in labels[2]
    expected = convmlp_stage_maps(baseline, visualize.to_tensor(visualize.load_image('skimage:chelsea', (64, 64))))
    torch.testing.assert_close(drawn['rows'][2][1][0][1], expected[0][1])  # the file's weights drew the row
    names = [[name.split('\n')[0] for name, _ in maps] for _, maps in drawn['rows']]
    assert names == [['layer1', 'layer2', 'layer3', 'layer4'],
                     ['block 3/12', 'block 6/12', 'block 9/12', 'block 12/12'],
                     ['tokenizer', 'MLP stage 1', 'MLP stage 2', 'MLP stage 3'],
                     ['conv stage', 'ConvMLP stage 1', 'ConvMLP stage 2', 'ConvMLP stage 3']]
    sizes = [[m.shape[1] for _, m in maps] for _, maps in drawn['rows']]
    assert sizes == [[16, 8, 4, 2], [4, 4, 4, 4], [16, 8, 4, 2], [16, 8, 4, 2]]  # Mixer: 4x4 tokens at 64 px
    assert all('4x4 tokens' in name for name, _ in drawn['rows'][1][1])
    assert drawn['k'] == 4 and 'MLP-Mixer (no stages) at blocks 3, 6, 9, 12' in drawn['title']
    from PIL import Image
    with Image.open(out) as im:
        assert im.format == 'PNG' and im.mode == 'P'  # 256-colour palette: small
        assert im.size == stage_rows_size_px(rows=4, stages=4) == (900, 750)
        assert np.asarray(im.convert('L'), dtype=np.float32).std() > 10
    assert out.stat().st_size < 400_000
    assert list(out.parent.iterdir()) == [out]


@pytest.mark.parametrize('argv, words', [
    (['--model', 'convmlp_s_pure_mlp'], ['draws a ConvMLP size', '--model convmlp_s']),
    (['--img-size', '40'], ['not a multiple of 16']),
])
def test_ablation_figure_bad_input_exits_2(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        visualize.main(['--figure', 'ablation', '--random', '--out', str(tmp_path / 'x.png'), *argv])
    assert e.value.code == 2
    _one_error_line(capsys, *words)
    assert not (tmp_path / 'x.png').exists()


def test_ablation_figure_missing_baseline_checkpoint_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        visualize.main(['--figure', 'ablation', '--img-size', '64', '--baseline-checkpoint',
                        str(tmp_path / 'missing.pth'), '--out', str(tmp_path / 'x.png')])
    assert e.value.code == 2
    _one_error_line(capsys, 'missing.pth')
    assert not (tmp_path / 'x.png').exists()
