"""Fuzz the model (issue 5): any input either gives finite outputs of the right shape or the documented
ValueError; and a checkpoint that would run code is refused without running it."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from src import convmlp_s
from src.weights import CheckpointError, load_checkpoint_file, load_state_dict


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    # a tiny ConvMLP: same code paths as S, fast enough to fuzz
    from src.convmlp import ConvMLP
    return ConvMLP(blocks=(1, 1, 1), dims=(16, 32, 64), mlp_ratios=(1, 1, 1), channels=8,
                   n_conv_blocks=1, num_classes=7).eval()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 3), h=st.integers(1, 80), w=st.integers(1, 80),
       chans=st.sampled_from([3, 3, 3, 1, 4]), ndim=st.sampled_from([4, 4, 4, 3, 5]),
       dtype=st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.int64]))
def test_model_fuzz(model, batch, h, w, chans, ndim, dtype):
    shape = {3: (chans, h, w), 4: (batch, chans, h, w), 5: (batch, 1, chans, h, w)}[ndim]
    x = (torch.rand(shape) * 255).to(dtype)
    valid = ndim == 4 and chans == 3 and h >= 32 and w >= 32 and dtype == torch.float32
    if not valid:
        with pytest.raises(ValueError, match='got'):
            model(x)
        return
    with torch.no_grad():
        out = model(x)
    assert out.shape == (batch, 7) and torch.isfinite(out).all()


def test_bf16_input_under_autocast_is_accepted(model):
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32, dtype=torch.bfloat16))
    assert out.shape == (1, 7)


class _MakesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def test_malicious_pickle_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / 'pwned'
    ckpt = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'x': _MakesAFile(str(marker))}, ckpt)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match='refused') as e:
        load_checkpoint_file(ckpt)
    assert str(ckpt) in str(e.value) and 'open' in str(e.value)
    with pytest.raises(CheckpointError, match='refused'):
        convmlp_s(pretrained=str(ckpt))
    with pytest.raises(CheckpointError, match='refused'):
        load_state_dict(str(ckpt))
    assert not marker.exists()


def test_truncated_checkpoint_reports_path_and_size(tmp_path):
    ckpt = tmp_path / 'cut.pth'
    torch.save(convmlp_s().state_dict(), ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=rf'{ckpt} \({len(data) // 3} bytes\): truncated'):
        convmlp_s(pretrained=str(ckpt))
    assert os.path.getsize(ckpt) == len(data) // 3  # reading never modifies the file
