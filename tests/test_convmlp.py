"""The model against REPRODUCTION §1: checkpoint layout, sizes, MACs, shapes, modes, bad input."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import MANIFEST, ROOT
from helpers import randomize_norms
from src import convmlp_l, convmlp_m, convmlp_s

BUILDERS = {'convmlp_s': convmlp_s, 'convmlp_m': convmlp_m, 'convmlp_l': convmlp_l}
MANIFEST_DATA = json.loads(MANIFEST.read_text())


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_manifest_copy_matches_shared():
    shared = ROOT.parent / 'shared' / 'convmlp_state_dict_manifest.json'
    if not shared.exists():
        pytest.skip('no ../shared beside this checkout')
    assert json.loads(shared.read_text()) == MANIFEST_DATA


@pytest.mark.parametrize('name', BUILDERS)
@pytest.mark.parametrize('head', [True, False])
def test_state_dict_matches_release_manifest(name, head):
    sd = BUILDERS[name](classifier_head=head).state_dict()
    ref = MANIFEST_DATA[name if head else f'{name}_backbone']
    assert sorted(sd) == sorted(ref)
    assert {k: list(v.shape) for k, v in sd.items()} == ref


@pytest.mark.parametrize('name,expected', [('convmlp_s', 9_022_920), ('convmlp_m', 17_410_504),
                                           ('convmlp_l', 42_728_440)])
def test_param_count_imagenet(name, expected):
    assert n_params(BUILDERS[name]()) == expected


@pytest.mark.parametrize('classes,paper', [
    (10, {'convmlp_s': 8.51, 'convmlp_m': 16.90, 'convmlp_l': 41.97}),
    (100, {'convmlp_s': 8.56, 'convmlp_m': 16.95, 'convmlp_l': 42.04}),
    (102, {'convmlp_s': 8.56, 'convmlp_m': 16.95, 'convmlp_l': 42.04}),
])
def test_param_count_finetuned_heads(classes, paper):
    for name, millions in paper.items():
        assert abs(n_params(BUILDERS[name](num_classes=classes)) / 1e6 - millions) <= 0.01, name


@pytest.mark.parametrize('name,gmacs', [('convmlp_s', 2.40), ('convmlp_m', 3.95), ('convmlp_l', 9.90)])
def test_macs_at_224(name, gmacs):
    model = BUILDERS[name]().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    macs = counter.get_total_flops() / 2 / 1e9  # FlopCounterMode counts a multiply-add as 2
    assert abs(macs - gmacs) / gmacs < 0.01, macs


@pytest.fixture(scope='module')
def small_models():
    torch.manual_seed(0)
    return convmlp_s().eval(), convmlp_s(classifier_head=False).eval()


@pytest.mark.parametrize('hw', [(224, 224), (161, 199), (32, 32), (512, 384)])
def test_output_and_feature_shapes(small_models, hw):
    clf, backbone = small_models
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        assert clf(x).shape == (2, 1000)
        feats = backbone.forward_dense(x)
        last = clf.forward_features(x)
    h, w = hw
    expect = []
    for stride, ch in zip((4, 8, 16, 32), (64, 128, 256, 512)):
        expect.append((2, ch, -(-h // stride), -(-w // stride)))  # ceil: every downsample pads
    assert [tuple(f.shape) for f in feats] == expect
    assert tuple(last.shape) == expect[-1]
    assert all(torch.isfinite(f).all() for f in feats)


def test_large_variant_feature_channels():
    feats = convmlp_l(classifier_head=False).eval().forward_dense(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [96, 192, 384, 768]


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = convmlp_s(drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    for m in model.modules():  # keep BN statistics out of the comparison
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for b in model.stages[1].blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.5, 4).tolist())  # per stage, from 0
    assert isinstance(model.stages[1].blocks[0].drop_path, torch.nn.Identity)  # rate 0: no op
    assert convmlp_s().drop_path_rate == 0.1


def test_train_mode_backward_reaches_every_parameter():
    model = convmlp_s(num_classes=5).train()
    model(torch.randn(2, 3, 64, 48)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_timm_style_api():
    model = convmlp_s(num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    feats = model.forward_features(x)
    assert feats.shape == (2, 512, 7, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    assert torch.allclose(model.forward_head(feats), model(x))
    assert model.get_classifier().out_features == 10 and model.num_classes == 10
    assert model.num_features == model.head_hidden_size == 512
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize('arch', ['convmlp_s', 'convmlp_m'])
def test_forward_intermediates_final_is_forward_features_and_last_map_normed_once(arch):
    """timm's convention with trained-looking norms: the final output is forward_features' for every
    ``indices`` and ``norm``; the intermediates are forward_dense's maps, the last one through the final
    LayerNorm exactly once when ``norm=True``."""
    torch.manual_seed(0)
    model = randomize_norms(BUILDERS[arch]()).eval()
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        features, dense = model.forward_features(x), model.forward_dense(x)
        ln = model.norm
        normed = F.layer_norm(dense[3].permute(0, 2, 3, 1), ln.normalized_shape, ln.weight, ln.bias,
                              ln.eps).permute(0, 3, 1, 2)
        twice = F.layer_norm(normed.permute(0, 2, 3, 1), ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        assert (twice.permute(0, 3, 1, 2) - normed).abs().max() > 1  # a second norm would show
        for indices, take in [(None, [0, 1, 2, 3]), (1, [3]), (2, [2, 3]), (4, [0, 1, 2, 3]), ([0], [0]),
                              ([3], [3]), ([-1], [3]), ([0, 2], [0, 2]), ([1, -1], [1, 3])]:
            for norm in (False, True):
                final, inter = model.forward_intermediates(x, indices=indices, norm=norm)
                torch.testing.assert_close(final, features, rtol=0, atol=0)
                only = model.forward_intermediates(x, indices=indices, norm=norm, intermediates_only=True)
                want = [normed if norm and i == 3 else dense[i] for i in take]
                for got in (inter, only):
                    assert len(got) == len(want)
                    for g, w in zip(got, want):
                        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize('bad,msg', [
    (torch.randn(3, 224, 224), '4-D'),
    (torch.randn(1, 1, 224, 224), '(B, 3, H, W)'),
    (torch.randn(1, 3, 31, 224), '>= 32'),
    (torch.randn(1, 3, 64, 16), '>= 32'),
])
def test_bad_input_raises_value_error(small_models, bad, msg):
    for model in small_models:
        with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')) as e:
            model(bad)
        assert 'got' in str(e.value)


def test_unknown_kwargs_are_errors_not_swallowed():
    with pytest.raises(TypeError, match='unexpected keyword'):
        convmlp_s(drop_path=0.1)


def test_importing_model_pulls_no_timm_or_openmmlab():
    code = ('import sys; import src.convmlp, src; from src import convmlp_s; convmlp_s(); '
            'bad = [m for m in sys.modules if m.split(".")[0] in ("timm", "mmcv", "mmdet", "mmseg", "mmengine")]; '
            'print(bad); sys.exit(bool(bad))')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True)
