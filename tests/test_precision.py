"""Mixed precision by CPU capability (src/utils/precision.py): ``--amp`` autocasts to bf16 only where the CPU computes
bf16 natively, else warns once and runs fp32; ``--no-amp`` (and every other ``--no-X``) beats a config."""
import argparse

import pytest
import torch
from torch import nn

from conftest import ROOT
from src.utils import precision
from src.train import engine
from src.train.config import build_parser, parse_args
from src.utils.errors import UsageError


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(native)``: fake the CPU's answer to 'is bf16 native?'; the warn-once memory starts empty."""
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    monkeypatch.setattr(precision, '_warned', set())

    def fake(native: bool):
        monkeypatch.setattr(precision, 'cpu_native', lambda dtype=torch.bfloat16: native)
    return fake


def _autocast_state(amp_context) -> tuple:
    """(autocast on?, dtype a conv computes in) inside the context ``autocast_for`` returned."""
    conv = nn.Conv2d(3, 4, 1)
    with amp_context():
        return torch.is_autocast_enabled('cpu'), conv(torch.randn(1, 3, 4, 4)).dtype


def test_amp_on_native_bf16_cpu_autocasts_to_bf16(cpu, monkeypatch):
    cpu(True)
    warnings = []
    monkeypatch.setattr(engine._log, 'warning', warnings.append)
    assert _autocast_state(engine.autocast_for(torch.device('cpu'), True, None)) == (True, torch.bfloat16)
    assert warnings == []
    assert _autocast_state(engine.autocast_for(torch.device('cpu'), False, None)) == (False, torch.float32)


def test_amp_on_emulated_bf16_cpu_warns_once_and_runs_fp32(cpu, monkeypatch):
    cpu(False)
    warnings = []
    monkeypatch.setattr(engine._log, 'warning', warnings.append)
    for _ in range(2):
        assert _autocast_state(engine.autocast_for(torch.device('cpu'), True, None)) == (False, torch.float32)
    assert len(warnings) == 1 and '\n' not in warnings[0]
    assert warnings[0].startswith('bf16 is emulated on this CPU') and 'fp32' in warnings[0]
    assert f'{precision.FORCE_ENV}=force' in warnings[0]  # how to insist

    monkeypatch.setenv(precision.FORCE_ENV, 'force')
    assert _autocast_state(engine.autocast_for(torch.device('cpu'), True, None)) == (True, torch.bfloat16)
    monkeypatch.setenv(precision.FORCE_ENV, 'yes')
    with pytest.raises(UsageError, match=f"{precision.FORCE_ENV} must be 'auto' or 'force', got 'yes'"):
        engine.autocast_for(torch.device('cpu'), True, None)


def test_cuda_amp_ignores_the_cpu(cpu):
    cpu(False)
    assert precision.amp_dtype('cuda') is torch.float16
    assert precision.amp_dtype('cuda', torch.bfloat16) is torch.bfloat16


def test_warning_only_on_the_first_process_of_a_node(cpu, monkeypatch):
    cpu(False)
    monkeypatch.setenv('LOCAL_RANK', '1')
    said = []
    assert precision.amp_dtype('cpu', warn=said.append) is None and said == []


def test_detector_reads_this_cpu():
    """The real detector agrees with the CPU's feature list, and the instruction-set line says the same."""
    native = precision.cpu_native(torch.bfloat16)
    assert native == (torch.backends.mkldnn.is_available() and
                      bool({'avx512_bf16', 'amx_bf16', 'bf16', 'sve_bf16'} & precision.cpu_features()))
    assert precision.cpu_isa().startswith(torch.backends.cpu.get_cpu_capability())
    assert ('bf16 native' if native else 'bf16 emulated') in precision.cpu_isa()
    assert precision.cpu_native(torch.float32)


def test_no_amp_beats_a_config_amp_true(tmp_path):
    cfg = tmp_path / 'c.yml'
    cfg.write_text('amp: true\nno_aug: true\nmodel_ema: true\n')
    args, _ = parse_args(['-c', str(cfg)])
    assert args.amp and args.no_aug and args.model_ema
    args, _ = parse_args(['-c', str(cfg), '--no-amp', '--aug', '--no-model-ema'])
    assert not args.amp and not args.no_aug and not args.model_ema


def test_every_switch_a_config_can_set_can_be_switched_off():
    """Each on/off option either is a --X/--no-X pair or has an opposite option writing the same key."""
    parser = build_parser()
    switches = [a for a in parser._actions if a.nargs == 0 and a.dest not in ('help',)]
    assert len(switches) >= 8
    for action in switches:
        if isinstance(action, argparse.BooleanOptionalAction):
            continue
        value = action.const
        assert any(other.dest == action.dest and other.nargs == 0 and other.const is not value
                   for other in parser._actions), f'{action.option_strings} cannot be undone on the command line'


def test_benchmark_table_marks_emulated_rows():
    from src.perf import benchmark as bench
    rows = [dict(config=dict(model='convmlp_s', mode='infer', batch=1, res=32, dtype=d), label=f'{d} eager',
                 images_per_s=1., x_baseline=1., tensor_mib=1., rss_mib=1., gflops=1., pct_peak=1.)
            for d in ('fp32', 'bf16')]
    table = bench.markdown_table(rows, emulated=['bf16'])
    assert '| fp32 eager | 1 |' in table and '| bf16 eager (bf16 emulated) | 1 |' in table


@pytest.mark.parametrize('native', [True, False])
def test_dense_amp_follows_the_cpu(cpu, native, monkeypatch, capsys):
    """detection/segmentation --amp on CPU: bf16 (train: the CPU autocast optim wrapper, test: mmengine's
    test loop autocast) where bf16 is native, else one warning and the config unchanged (fp32)."""
    pytest.importorskip('mmdet')
    from src.mm import config as mm_config
    from src.mm.run import parse_args
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(mm_config, 'check_data_paths', lambda cfg, mode: None)
    cpu(native)
    config = str(ROOT / 'configs/detection/retinanet_convmlp_s_fpn_1x_coco.py')
    train = mm_config.prepare_config(parse_args('detection', 'train', [config, '--amp']), 'detection', 'train')
    test = mm_config.prepare_config(parse_args('detection', 'test', [config, 'x.pth', '--amp']), 'detection', 'test')
    err = capsys.readouterr().err
    if native:
        assert train.optim_wrapper.type == 'CPUAutocastOptimWrapper' and train.optim_wrapper.dtype == 'bfloat16'
        assert test.test_cfg.get('fp16') is True and err == ''
    else:
        assert train.optim_wrapper.type == 'OptimWrapper' and not test.test_cfg.get('fp16')
        assert err.count('\n') == 1 and err.startswith('bf16 is emulated on this CPU')


def test_cpu_autocast_optim_wrapper_steps_in_bf16():
    pytest.importorskip('mmengine')
    from mmengine.optim import build_optim_wrapper
    from src.mm import cpu_amp  # noqa: F401  registers the wrapper
    model = nn.Linear(4, 2)
    wrapper = build_optim_wrapper(model, dict(type='CPUAutocastOptimWrapper', dtype='bfloat16',
                                              optimizer=dict(type='SGD', lr=0.1)))
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().pow(2).mean())
    assert model.weight.dtype == torch.float32 and not torch.equal(model.weight, before)
    with pytest.raises(ValueError, match="dtype must be 'bfloat16' or 'float16'"):
        build_optim_wrapper(model, dict(type='CPUAutocastOptimWrapper', dtype='int8', optimizer=dict(type='SGD', lr=1)))
