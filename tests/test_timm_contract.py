"""timm's model contract (issue 17): the keyword arguments timm's own scripts pass, ``drop_rate``,
``in_chans`` (pretrained weights adapted), torch.fx tracing and feature extraction, torch.export with
dynamic sizes, and torch.jit.script."""
import io
import warnings

import pytest
import timm
import torch
from timm.models import adapt_input_conv
from torch.export import Dim
from timm.layers import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import src.classification  # noqa: F401  registers the models
from src import zoo
from src.convmlp import convmlp_s
from helpers import randomize_norms

NAMES = timm.list_models('convmlp*')


@pytest.mark.parametrize('name', NAMES)
def test_create_model_as_timm_scripts_call_it(name):
    """train.py, validate.py and benchmark.py pass these (None values are dropped by create_model)."""
    train = timm.create_model(name, pretrained=False, num_classes=5, drop_rate=0.1, drop_path_rate=0.05,
                              drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None,
                              scriptable=False, checkpoint_path='', in_chans=3)
    assert train.head_drop.p == 0.1 and train.drop_path_rate == 0.05
    x = torch.randn(2, 3, 64, 64)
    train(x).sum().backward()
    validate = timm.create_model(name, pretrained=False, num_classes=None, in_chans=3, global_pool=None,
                                 scriptable=False).eval()
    with torch.no_grad():
        assert validate(x).shape == (2, 1000)


def test_drop_rate_is_dropout_before_the_head():
    torch.manual_seed(0)
    model = timm.create_model('convmlp_s', drop_rate=0.5, drop_path_rate=0., num_classes=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        zeros = (pooled == 0).float().mean().item()
        assert 0.4 < zeros < 0.6  # half of the pooled features dropped, the rest scaled by 2
        a, b = model(x), model(x)
        assert not torch.equal(a, b)
        model.eval()
        assert torch.equal(model(x), model(x))
    assert set(model.state_dict()) == set(timm.create_model('convmlp_s', num_classes=3).state_dict())


@pytest.mark.parametrize('in_chans', [1, 4])
def test_in_chans_forward_backward(in_chans):
    model = timm.create_model('convmlp_s', in_chans=in_chans, num_classes=4)
    assert model.tokenizer.block[0].weight.shape[1] == in_chans
    x = torch.randn(2, in_chans, 48, 64)
    model(x).logsumexp(1).sum().backward()
    assert model.tokenizer.block[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=rf'\(B, {in_chans}, H, W\)'):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize('in_chans', [1, 4])
def test_in_chans_adapts_pretrained_weights(in_chans, http_server, monkeypatch, hub_dir, tmp_path):
    """From the (served) release file through timm, and from a local file through the plain factory: the
    3-channel first conv becomes timm's adapt_input_conv of it, everything else loads unchanged."""
    base, routes = http_server
    monkeypatch.setenv(zoo.BASE_ENV, base)
    rgb = convmlp_s().eval()
    buf = io.BytesIO()
    torch.save({'state_dict': rgb.state_dict()}, buf)
    routes['/convmlp_s_imagenet.pth'] = ('ok', buf.getvalue())
    torch.save(rgb.state_dict(), tmp_path / 'rgb.pth')
    want = adapt_input_conv(in_chans, rgb.tokenizer.block[0].weight.detach())
    for model in (timm.create_model('convmlp_s', pretrained=True, in_chans=in_chans),
                  convmlp_s(pretrained=str(tmp_path / 'rgb.pth'), in_chans=in_chans)):
        assert torch.equal(model.tokenizer.block[0].weight, want)
        assert torch.equal(model.head.weight, rgb.head.weight)
        model(torch.randn(2, in_chans, 64, 64)).sum().backward()


@pytest.mark.parametrize('train', [False, True])
def test_fx_trace_equals_eager(train):
    torch.manual_seed(0)
    model = convmlp_s(drop_path_rate=0.).train(train)
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 161, 199)
    torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match='>= 32'):  # the input check stays in the traced graph
        graph(torch.randn(1, 3, 16, 64))


def test_fx_feature_extractors_equal_forward_dense():
    torch.manual_seed(0)
    model = convmlp_s().eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        want = model.forward_dense(x)
        nodes = {'tokenizer': 't', 'conv_stages': 'c', 'stages.0': 's0', 'stages.2': 's2'}
        got = create_feature_extractor(model, return_nodes=nodes)(x)
        assert [tuple(t.shape) for t in got.values()] == [tuple(t.shape) for t in want]
        for g, w in zip(got.values(), want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        fx = timm.create_model('convmlp_s', features_only=True, feature_cls='fx').eval()
        own = model.state_dict()
        fx.load_state_dict({k: own[k.removeprefix('graph_module.')] for k in fx.state_dict()})
        assert fx.feature_info.reduction() == [4, 8, 16, 32]
        for g, w in zip(fx(x), want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_torch_export_dynamic_batch_height_width():
    model = convmlp_s().eval()
    dims = {0: Dim('batch', min=1, max=64), 2: Dim('height', min=33, max=2048), 3: Dim('width', min=33, max=2048)}
    program = torch.export.export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes=(dims,))
    with torch.no_grad():
        for shape in [(1, 3, 161, 199), (3, 3, 224, 224)]:
            x = torch.randn(shape)
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('head,tokenizer', [(True, 'conv'), (False, 'conv'), (True, 'patch')])
def test_torch_jit_script_equals_eager(head, tokenizer):
    model = convmlp_s(classifier_head=head, tokenizer=tokenizer).eval()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated in torch 2.x
        scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
        for got, want in zip(scripted.forward_dense(x), model.forward_dense(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize('name', NAMES)
def test_fx_traced_then_scripted_equals_eager(name):
    """As timm tests every model: fx-trace with timm's leaf modules and autowrapped functions, script the
    traced module, compare with eager (training and eval graphs)."""
    torch.manual_seed(0)
    model = randomize_norms(timm.create_model(name, num_classes=7, drop_path_rate=0.))
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    traced = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                      eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated in torch 2.x
        scripted = torch.jit.script(traced)
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        for mode in (False, True):  # eval graph, then training graph (BatchNorm on batch statistics)
            for m in (model, scripted):
                m.train(mode)
            want = model(x)
            got, = scripted(x).values()
            torch.testing.assert_close(got, want, rtol=0, atol=0)
