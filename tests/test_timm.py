"""timm registration: create_model, pretrained configs, features_only, data config, release aliases."""
import io

import pytest
import timm
import torch
from timm.data import resolve_data_config

import src.classification  # noqa: F401  registers the models
from src import zoo


@pytest.mark.parametrize('name', ['convmlp_s', 'convmlp_m', 'convmlp_l', 'convmlp_s_classification',
                                  'convmlp_m_classification', 'convmlp_l_classification'])
def test_registered_with_pretrained_cfg(name):
    assert name in timm.list_models('convmlp*')
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    arch = name.replace('_classification', '')
    assert cfg['url'] == zoo.weight_url(arch)
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.9 and cfg['interpolation'] == 'bicubic'
    sd = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in sd and f"{cfg['classifier']}.weight" in sd
    assert resolve_data_config(model=model) == dict(
        input_size=(3, 224, 224), interpolation='bicubic', mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225), crop_pct=0.9, crop_mode='center')


def test_create_model_pretrained_new_head(http_server, monkeypatch, hub_dir):
    base, routes = http_server
    monkeypatch.setenv(zoo.BASE_ENV, base)
    src_model = timm.create_model('convmlp_s').eval()
    buf = io.BytesIO()
    torch.save({'state_dict': src_model.state_dict()}, buf)
    routes['/convmlp_s_imagenet.pth'] = ('ok', buf.getvalue())
    same = timm.create_model('convmlp_s', pretrained=True).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(same(x), src_model(x))
    with pytest.warns(UserWarning, match='freshly initialised'):
        model = timm.create_model('convmlp_s', pretrained=True, num_classes=10)
    assert model.num_classes == 10 and model(x).shape == (1, 10)
    assert torch.equal(model.tokenizer.block[0].weight, src_model.tokenizer.block[0].weight)
    assert 'state_dict' not in model.pretrained_cfg


def test_features_only_with_out_indices():
    model = timm.create_model('convmlp_l', features_only=True, out_indices=(0, 2, 3)).eval()
    assert model.feature_info.channels() == [96, 384, 768]
    assert model.feature_info.reduction() == [4, 16, 32]
    feats = model(torch.randn(1, 3, 128, 160))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 32, 40), (1, 384, 8, 10), (1, 768, 4, 5)]
    all_feats = timm.create_model('convmlp_s_classification', features_only=True)
    assert all_feats.feature_info.channels() == [64, 128, 256, 512]


def test_timm_kwargs_reach_the_model():
    model = timm.create_model('convmlp_s', drop_path_rate=0.2, num_classes=0)
    assert model.drop_path_rate == 0.2
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(TypeError):
        timm.create_model('convmlp_s', not_an_option=1)
