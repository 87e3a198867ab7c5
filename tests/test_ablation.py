"""The paper's ablation as models (issue 14): switches, parameter counts written out from the layer
shapes, every row's shapes and gradients, timm, mmdet/mmseg backbones, and the release's headless output."""
import itertools
import re
from pathlib import Path

import pytest
import timm
import torch

import src.classification  # noqa: F401  registers the models
from src import convmlp
from src.convmlp import ABLATION, ARCHS, ConvMLP
from helpers import load_tool

ROOT_CONFIGS = Path(__file__).resolve().parents[1] / 'configs' / 'classification'
SWITCH_VALUES = dict(tokenizer=('conv', 'patch'), conv_stage=(True, False), downsample=('conv', 'patch_merge'),
                     connect=(True, False))
DEFAULTS = dict(tokenizer='conv', conv_stage=True, downsample='conv', connect=True)
# the state-dict keys each switch may change, and nothing else
SWITCH_KEYS = dict(tokenizer=r'tokenizer\.', conv_stage=r'conv_stages\.conv_blocks\.',
                   downsample=r'(conv_stages\.downsample|stages\.\d+\.downsample_mlp)\.',
                   connect=r'stages\.\d+\.blocks\.\d+\.connect(_norm)?\.')


def expected_params(arch: str, tokenizer: str, conv_stage: bool, downsample: str, connect: bool,
                    num_classes: int = 1000) -> int:
    """Parameters counted from the layer shapes of REPRODUCTION §1 and the ablation's modules."""
    a = ARCHS[arch]
    c, dims = a['channels'], a['dims']

    def conv_bn(cin, cout, k):  # conv without bias, BN weight and bias
        return cin * cout * k * k + 2 * cout

    def down(cin, cout):  # 3x3/2 conv with bias | LayerNorm(4 cin) + Linear(4 cin, cout) without bias
        return cin * cout * 9 + cout if downsample == 'conv' else 2 * 4 * cin + 4 * cin * cout

    if tokenizer == 'conv':
        n = conv_bn(3, c // 2, 3) + conv_bn(c // 2, c // 2, 3) + conv_bn(c // 2, c, 3)
    else:  # 4x4 patch -> c with bias, LayerNorm(c)
        n = 3 * 16 * c + c + 2 * c
    if conv_stage:
        d0 = dims[0]
        n += a['n_conv_blocks'] * (conv_bn(c, d0, 1) + conv_bn(d0, d0, 3) + conv_bn(d0, c, 1))
    n += down(c, dims[0])
    for i, (blocks, d, ratio) in enumerate(zip(a['blocks'], dims, a['mlp_ratios'])):
        hidden = int(d * ratio)
        block = 2 * 2 * d + 2 * (d * hidden + hidden + hidden * d + d)  # norm1, norm2, two MLPs
        if connect:
            block += 2 * d + 9 * d  # connect_norm, depthwise 3x3 without bias
        n += blocks * block
        if i + 1 < len(dims):
            n += down(d, dims[i + 1])
    return n + 2 * dims[-1] + dims[-1] * num_classes + num_classes


def n_params(build, *args, **kwargs) -> int:
    """Parameters of ``build(*args, **kwargs)``, built on the meta device (no memory, no init)."""
    with torch.device('meta'):
        return sum(p.numel() for p in build(*args, **kwargs).parameters())


@pytest.mark.parametrize('arch', ARCHS)
def test_every_switch_combination_has_the_params_counted_by_hand(arch):
    for values in itertools.product(*SWITCH_VALUES.values()):
        switches = dict(zip(SWITCH_VALUES, values))
        assert n_params(ConvMLP, **ARCHS[arch], **switches) == expected_params(arch, **switches), switches


def test_named_rows_are_the_papers_steps():
    """Pure-MLP baseline = all four off; each row adds one step; the release defaults are ConvMLP."""
    assert ABLATION['pure_mlp'] == dict(tokenizer='patch', conv_stage=False, downsample='patch_merge', connect=False)
    assert ABLATION['conv_stage'] == dict(ABLATION['pure_mlp'], tokenizer='conv', conv_stage=True)
    assert ABLATION['conv_downsample'] == dict(ABLATION['conv_stage'], downsample='conv')
    assert dict(ABLATION['conv_downsample'], connect=True) == DEFAULTS
    for arch in ARCHS:
        for row, switches in ABLATION.items():
            assert n_params(getattr(convmlp, f'{arch}_{row}')) == expected_params(arch, **switches)
        assert n_params(getattr(convmlp, arch)) == expected_params(arch, **DEFAULTS)


@pytest.mark.parametrize('switch', SWITCH_VALUES)
def test_each_switch_changes_exactly_the_modules_it_names(switch):
    other = SWITCH_VALUES[switch][1]
    with torch.device('meta'):
        default = {k: tuple(v.shape) for k, v in ConvMLP(**ARCHS['convmlp_s']).state_dict().items()}
        changed = {k: tuple(v.shape) for k, v in ConvMLP(**ARCHS['convmlp_s'], **{switch: other}).state_dict().items()}
    differ = set(default.items()) ^ set(changed.items())
    assert differ
    assert all(re.match(SWITCH_KEYS[switch], k) for k, _ in differ), sorted(differ)[:5]


def test_bad_switch_value_is_a_clear_error():
    with pytest.raises(ValueError, match=r"tokenizer must be one of \['conv', 'patch'\]; got 'patchify'"):
        ConvMLP(**ARCHS['convmlp_s'], tokenizer='patchify')
    with pytest.raises(ValueError, match='no released weights for convmlp_s_pure_mlp'):
        convmlp.convmlp_s_pure_mlp(pretrained=True)


@pytest.mark.parametrize('name', sorted(convmlp.ABLATION_MODELS))
def test_every_row_odd_size_forward_backward_and_features_only(name):
    torch.manual_seed(0)
    model = getattr(convmlp, name)(num_classes=5)
    x = torch.randn(2, 3, 97, 131)
    model(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    chans = [c for c in (model.feature_info[i]['num_chs'] for i in range(4))]
    feats = timm.create_model(name, features_only=True).eval()
    with torch.no_grad():
        maps = feats(torch.randn(1, 3, 97, 131))
    assert [tuple(m.shape) for m in maps] == [(1, c, -(-97 // s), -(-131 // s))
                                            for c, s in zip(chans, (4, 8, 16, 32))]


def test_timm_rows_take_switch_overrides():
    model = timm.create_model('convmlp_s_pure_mlp', connect=True, num_classes=3)
    assert isinstance(model.stages[0].blocks[0].connect, torch.nn.Conv2d)
    assert isinstance(model.tokenizer, convmlp.PatchEmbed) and model.num_classes == 3


def release_headless_forward(model: ConvMLP, x: torch.Tensor) -> torch.Tensor:
    """The release's ``forward`` with ``classifier_head=False``, written out the release's way: NCHW
    tokenizer and conv stage, permute, blocks on (B, H, W, C) with nn.Linear MLPs, downsample convs on
    permuted copies; returns the last stage's (B, H/32, W/32, C) map."""
    x = model.tokenizer.block(x)
    for block in model.conv_stages.conv_blocks:
        x = x + block(x)
    x = model.conv_stages.downsample(x).permute(0, 2, 3, 1)
    for stage in model.stages:
        for blk in stage.blocks:
            mlp1, mlp2 = blk.channel_mlp1, blk.channel_mlp2
            x = x + mlp1.fc2(mlp1.act(mlp1.fc1(blk.norm1(x))))
            x = blk.connect(blk.connect_norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = x + mlp2.fc2(mlp2.act(mlp2.fc1(blk.norm2(x))))
        if not isinstance(stage.downsample_mlp, torch.nn.Identity):
            x = stage.downsample_mlp.downsample(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return x


def test_classifier_head_false_returns_what_the_release_returned():
    torch.manual_seed(0)
    model = convmlp.convmlp_s(classifier_head=False).eval()
    assert 'norm.weight' not in model.state_dict() and 'head.weight' not in model.state_dict()
    x = torch.randn(2, 3, 224, 192)
    with torch.no_grad():
        out = model(x)
        want = release_headless_forward(model, x)
    assert out.shape == want.shape == (2, 7, 6, 512)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    assert [tuple(m.shape) for m in model.forward_dense(x)][-1] == (2, 512, 7, 6)


def test_complexity_tool_ablation_table(monkeypatch, capsys):
    """tools/complexity.py --ablation: one row per step with the params counted by hand (S only here)."""
    complexity = load_tool('complexity')
    monkeypatch.setattr(complexity.zoo, 'VARIANTS', ('convmlp_s',))
    assert complexity.main(['--ablation']) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| ConvMLP-S')]
    assert [r.split(' | ')[1] for r in rows] == ['Pure-MLP baseline', '+ conv stage', '+ conv downsampling',
                                                 '+ depthwise conv (ConvMLP)']
    for r, (row, switches) in zip(rows, [*ABLATION.items(), ('', DEFAULTS)]):
        assert f"| {expected_params('convmlp_s', **switches) / 1e6:.2f}M |" in r
    assert rows[0].endswith('| 4x4 patch | no | patch merge | no | 7.79M | 0.92G |')
    assert rows[-1].endswith('| conv | yes | 3x3/2 conv | yes | 9.02M | 2.40G |')


def test_classification_model_kwargs_from_config_and_command_line(tmp_path, capsys):
    """A config's model_kwargs mapping sets any switch; --model-kwargs KEY=VALUE overrides its keys; a
    keyword the model does not take is one error line, exit 2."""
    from classification_helpers import make_image_folder
    from src.train.config import parse_args
    from src.train.run import _create_model, main
    config = tmp_path / 'row.yml'
    config.write_text('_base_: ' + str(ROOT_CONFIGS / 'convmlp_s_pure_mlp_imagenet.yml') +
                      '\nmodel_kwargs: {connect: true, tokenizer: patch}\n')
    args, _ = parse_args(['-c', str(config), '--model-kwargs', 'tokenizer=conv', 'drop_rate=0.2'])
    assert args.model == 'convmlp_s_pure_mlp' and args.lr == 5e-4
    assert args.model_kwargs == dict(connect=True, tokenizer='conv', drop_rate=0.2)
    model = _create_model(args, num_classes=3)
    assert isinstance(model.tokenizer, convmlp.ConvTokenizer) and isinstance(model.stages[0].blocks[0].connect,
                                                                            torch.nn.Conv2d)
    assert isinstance(model.stages[0].downsample_mlp, convmlp.PatchMerge) and model.head_drop.p == 0.2
    data = make_image_folder(tmp_path / 'data')
    assert main([str(data), '--model', 'convmlp_s', '--model-kwargs', 'tokenizer=pixels', '--output',
                 str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tokenizer must be one of ['conv', 'patch']; got 'pixels'" in err[0]


def _train_step(config: str, scope: str, data: dict) -> dict:
    """One optimizer step of ``config``'s model (built as configured) on ``data``; returns the losses."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(str(ROOT_CONFIGS.parents[1] / config))
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)
    model.init_weights()
    assert isinstance(model.backbone.tokenizer, convmlp.PatchEmbed) and len(model.backbone.conv_stages.conv_blocks) == 0
    with torch.no_grad():
        maps = model.backbone(torch.randn(1, 3, 97, 131))
    assert [m.shape[-2:] for m in maps] == [(-(-97 // s), -(-131 // s)) for s in (4, 8, 16, 32)]
    before = model.backbone.tokenizer.proj.weight.detach().clone()
    losses = model.train_step(data, build_optim_wrapper(model, cfg.optim_wrapper))
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert not torch.equal(model.backbone.tokenizer.proj.weight, before)  # the step reached the backbone
    return losses


def test_mmdet_config_with_pure_mlp_backbone_trains_a_step():
    pytest.importorskip('mmdet')
    from mmdet.testing import demo_mm_inputs
    data = demo_mm_inputs(batch_size=2, image_shapes=[(3, 96, 128), (3, 128, 96)], num_items=[3, 2],
                          num_classes=80)
    losses = _train_step('configs/detection/retinanet_convmlp_s_pure_mlp_fpn_1x_coco.py', 'mmdet', data)
    assert {'loss_cls', 'loss_bbox'} <= set(losses)


def test_mmseg_config_with_pure_mlp_backbone_trains_a_step():
    pytest.importorskip('mmseg')
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    torch.manual_seed(0)
    inputs, samples = [], []
    for h, w in ((96, 128), (128, 96)):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
        samples.append(sample)
    losses = _train_step('configs/segmentation/fpn_convmlp_s_pure_mlp_512x512_40k_ade20k.py', 'mmseg',
                         dict(inputs=inputs, data_samples=samples))
    assert 'decode.loss_ce' in losses


def test_seeded_random_init_is_the_releases():
    """The switches did not change the order modules are built in: a seed gives the same random init as
    before them (the downsampling convs' biases keep their construction-time draw; figures of the model
    as it was at c8fcf53), so from-scratch runs reproduce across versions."""
    torch.manual_seed(0)
    model = convmlp.convmlp_s()
    got = [model.conv_stages.downsample.bias.sum().item(), model.stages[0].downsample_mlp.downsample.bias.sum().item(),
           model.stages[1].downsample_mlp.downsample.bias.sum().item(), model.head.weight.sum().item()]
    assert got == pytest.approx([0.480705, 0.177926, -0.096563, -32.462593], abs=1e-5)
