"""Pretrained weights: the real download path against a local HTTP server, wrappers, head handling."""
import io
import os

import pytest
import torch

from src import convmlp_m, convmlp_s, zoo
from src.weights import CheckpointError, load_state_dict


def _bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def served_s(http_server, monkeypatch, hub_dir):
    """A ConvMLP-S checkpoint served as the release's convmlp_s_imagenet.pth from 127.0.0.1."""
    base, routes = http_server
    monkeypatch.setenv(zoo.BASE_ENV, base)
    torch.manual_seed(1)
    src_model = convmlp_s().eval()
    routes['/convmlp_s_imagenet.pth'] = ('ok', _bytes(src_model.state_dict()))
    return src_model, base, routes, hub_dir


def test_pretrained_true_downloads_and_loads_strictly(served_s, capsys):
    src_model, base, _, hub_dir = served_s
    model = convmlp_s(pretrained=True, progress=True).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), src_model(x))
    assert (hub_dir / 'convmlp_s_imagenet.pth').is_file()
    assert '100.0%' in capsys.readouterr().err  # progress bar
    assert [p.name for p in hub_dir.iterdir()] == ['convmlp_s_imagenet.pth']  # no temp files left
    # the checkpoint holds every key of the model: strict load succeeds
    convmlp_s().load_state_dict(torch.load(hub_dir / 'convmlp_s_imagenet.pth', weights_only=True), strict=True)


def test_second_load_uses_cache(served_s):
    _, _, routes, _ = served_s
    convmlp_s(pretrained=True)
    routes.clear()  # server now 404s: the cache must serve
    convmlp_s(pretrained=True)


def test_pretrained_other_num_classes_keeps_fresh_head(served_s):
    src_model, *_ = served_s
    with pytest.warns(UserWarning, match='head left freshly initialised'):
        model = convmlp_s(pretrained=True, num_classes=10)
    assert model.head.out_features == 10
    assert torch.equal(model.tokenizer.block[0].weight, src_model.tokenizer.block[0].weight)
    assert torch.equal(model.norm.weight, src_model.norm.weight)


def test_pretrained_backbone_drops_norm_and_head(served_s):
    src_model, *_ = served_s
    model = convmlp_s(pretrained=True, classifier_head=False)
    assert torch.equal(model.stages[2].blocks[1].connect.weight, src_model.stages[2].blocks[1].connect.weight)


@pytest.mark.parametrize('wrap', [
    lambda sd: {'state_dict': sd},
    lambda sd: {'model': sd, 'epoch': 3},
    lambda sd: {'state_dict_ema': sd},
    lambda sd: {'state_dict': {f'module.{k}': v for k, v in sd.items()}},
])
def test_checkpoint_wrappers_are_unwrapped(tmp_path, wrap):
    src_model = convmlp_s(num_classes=10)
    path = tmp_path / 'ckpt.pth'
    torch.save(wrap(src_model.state_dict()), path)
    model = convmlp_s(pretrained=str(path), num_classes=10)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src_model.state_dict().values()))


def test_pretrained_other_url(http_server, hub_dir):
    base, routes = http_server
    routes['/mirror/my_s.pth'] = ('ok', _bytes({'model': convmlp_s().state_dict()}))
    convmlp_s(pretrained=f'{base}/mirror/my_s.pth')
    assert (hub_dir / 'my_s.pth').is_file()


def test_local_base_folder_as_mirror(tmp_path, monkeypatch, hub_dir):
    torch.save(convmlp_s().state_dict(), tmp_path / 'convmlp_s_imagenet.pth')
    monkeypatch.setenv(zoo.BASE_ENV, str(tmp_path))
    convmlp_s(pretrained=True)


@pytest.mark.parametrize('mode,body', [('ok', b'<html>502 Bad Gateway</html>' * 50), ('truncate', None)], ids=['garbage', 'truncated'])
def test_broken_download_clear_error_no_cached_file(served_s, mode, body):
    _, base, routes, hub_dir = served_s
    good = routes['/convmlp_s_imagenet.pth'][1]
    routes['/convmlp_s_imagenet.pth'] = (mode, body or good)
    url = f'{base}/convmlp_s_imagenet.pth'
    with pytest.raises(CheckpointError) as e:
        convmlp_s(pretrained=True)
    msg = str(e.value)
    assert url in msg and str(hub_dir / 'convmlp_s_imagenet.pth') in msg
    assert ('closed after' in msg) if mode == 'truncate' else ('not a PyTorch checkpoint' in msg)
    assert '\n' not in msg
    assert not hub_dir.exists() or os.listdir(hub_dir) == []


def test_server_error_and_unreachable_host(served_s):
    _, base, routes, hub_dir = served_s
    routes.clear()
    with pytest.raises(CheckpointError, match='HTTP Error 404'):
        convmlp_s(pretrained=True)
    with pytest.raises(CheckpointError, match='127.0.0.1:9/x.pth'):
        load_state_dict('http://127.0.0.1:9/x.pth')


def test_sha256_mismatch_refused(served_s):
    _, base, _, hub_dir = served_s
    with pytest.raises(CheckpointError, match='SHA-256 mismatch'):
        load_state_dict(f'{base}/convmlp_s_imagenet.pth', sha256='0' * 64)
    assert os.listdir(hub_dir) == []


def test_wrong_size_checkpoint_is_clear_error(tmp_path):
    path = tmp_path / 'm.pth'
    torch.save(convmlp_m().state_dict(), path)
    with pytest.raises(CheckpointError, match='does not fit this model'):
        convmlp_s(pretrained=str(path))


def test_missing_file_and_unknown_name():
    with pytest.raises(CheckpointError, match='checkpoint not found: /no/such.pth'):
        convmlp_s(pretrained='/no/such.pth')
    with pytest.raises(KeyError, match="did you mean 'convmlp_s_cifar10'"):
        load_state_dict('convmlp_s_cifar1')


def test_url_table_is_the_release():
    assert zoo.weight_url('convmlp_l') == 'https://shi-labs.com/projects/convmlp/checkpoints/convmlp_l_imagenet.pth'
    assert zoo.weight_url('retinanet_convmlp_m_coco').endswith('/checkpoints/detection/retinanet_convmlp_m_coco.pth')
    assert zoo.weight_url('sem_fpn_convmlp_s_ade20k').endswith('/segmentation/sem_fpn_convmlp_s_ade20k.pth')
    assert zoo.weight_url('convmlp_s_flowers102').endswith('/convmlp_s_flowers102.pth')  # not the L file
