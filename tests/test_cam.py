"""Class activation maps (issue 24): every method and layer on odd input sizes, ConvMLP's channels-last layers
handled inside (the library's map equals GradCAM written out with autograd), the library's smoothings on the
shared pass, the same call on a torchvision ResNet-18, the model left as it was, the crops' object masks, the
measured check on a small ConvMLP trained here and its tool, and the command line's one-line errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import load_tool, tiny_convmlp
from src.convmlp import ConvMLP, convmlp_s, nchw_view
from src.explain.cam import (METHODS, class_activation_maps, convmlp_layers, layer_map_sizes, maps_by_method,
                             resolve_class)
from src.studies import cam_localization as C
from src.studies.shapes import CLASSES, make_crops
from src.utils.threads import torch_threads

pytest.importorskip('pytorch_grad_cam')
SIZES = [(65, 47), (33, 33)]
CROPS = dict(size=(128, 96), seed=0, crop_size=64, radius=(0.16, 0.30))  # the transfer workflow's crops


@pytest.fixture(scope='module')
def model():
    return tiny_convmlp()


@pytest.fixture(scope='module')
def resnet18():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


# ---- the function ----------------------------------------------------------------------------------
@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_every_method_and_layer_gives_an_input_sized_map(model, size):
    x = torch.randn(2, 3, *size)
    sizes = layer_map_sizes(model, *size)
    for layer in convmlp_layers(model):
        for method, r in maps_by_method(model, x, list(METHODS), layer).items():
            assert r.maps.shape == (2, *size) and r.maps.dtype == np.float32, (method, layer)
            assert np.isfinite(r.maps).all() and r.maps.min() >= 0 and r.maps.max() <= 1 + 1e-6, (method, layer)
            assert r.layer == layer and r.map_size == sizes[layer] and len(r.classes) == 2
            assert all(0 <= p <= 1 for p in r.probs)


def test_methods_sharing_a_pass_equal_each_method_alone(model):
    x = torch.randn(3, 3, 47, 65)
    together = maps_by_method(model, x, list(METHODS), 'stage2', target=[0, 2, 1])
    for method in METHODS:
        alone = class_activation_maps(model, x, method, 'stage2', target=[0, 2, 1])
        assert np.array_equal(alone.maps, together[method].maps), method
        assert alone.classes == together[method].classes == [0, 2, 1]


@pytest.mark.parametrize('smooth', [dict(eigen_smooth=True), dict(aug_smooth=True)], ids=['eigen', 'aug'])
def test_smoothed_maps_equal_the_librarys_own_smoothing(model, smooth):
    """eigen_smooth and aug_smooth through the shared pass (aug: one pass per augmentation, each map mapped
    back) give the library's own call's maps, method by method; and they differ from the unsmoothed map."""
    from src.explain.cam import _ClassScore, _library_class, resolve_layer
    x = torch.randn(3, 3, 47, 65)
    methods = ['gradcam', 'xgradcam', 'layercam', 'hirescam']
    together = maps_by_method(model, x, methods, 'stage1', target=[0, 2, 1], **smooth)
    layer = resolve_layer(model, 'stage1')
    for method in methods:
        library = _library_class(method)(model=model, target_layers=[layer.module], reshape_transform=nchw_view)
        own = library(input_tensor=x.clone().requires_grad_(True), targets=[_ClassScore(i) for i in (0, 2, 1)],
                      **smooth)
        assert np.abs(together[method].maps - own).max() < 1e-6, method
        assert together[method].maps.shape == (3, 47, 65) and together[method].classes == [0, 2, 1]
        plain = class_activation_maps(model, x, method, 'stage1', target=[0, 2, 1]).maps
        assert np.abs(plain - own).max() > 1e-3, method
    predicted = class_activation_maps(model, x, 'gradcam', 'conv_block', aug_smooth=True)
    assert predicted.classes == model(x).argmax(-1).tolist()  # of the image as given, in every augmentation


def test_convmlp_s_default_layer_is_the_last_stage():
    m = convmlp_s(num_classes=5).eval()
    r = class_activation_maps(m, torch.randn(1, 3, 65, 47))
    assert r.layer == 'stage3' and r.maps.shape == (1, 65, 47) and np.isfinite(r.maps).all()
    assert r.map_size == (3, 2) and layer_map_sizes(m, 65, 47)['stage3'] == (3, 2)


def gradcam_by_hand(model, x, module, channels_last: bool, classes) -> np.ndarray:
    """GradCAM written out: ReLU(sum_c mean_hw(d score / dA) * A) at ``module``'s output, scaled to [0, 1],
    bilinear (cv2, as the library) to the input's size, scaled again."""
    import cv2
    store = {}
    hook = module.register_forward_hook(lambda m, i, o: store.__setitem__('a', o))
    try:
        scores = model(x.clone().requires_grad_(True))
    finally:
        hook.remove()
    a = store['a']
    g, = torch.autograd.grad(scores[torch.arange(len(x)), classes].sum(), a)
    if channels_last:
        a, g = a.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    out = []
    for c in cam:
        c = (c - c.min()) / (c.max() - c.min() + 1e-7)
        c = cv2.resize(np.float32(c), (x.shape[3], x.shape[2]))
        out.append((c - c.min()) / (c.max() - c.min() + 1e-7))
    return np.stack(out)


@pytest.mark.parametrize('layer', ['tokenizer', 'conv_block', 'conv_stage', 'stage1', 'stage2', 'stage3', 'norm'])
def test_channels_last_layers_are_permuted_inside(layer):
    """The library's GradCAM through the project equals the one written by hand on the right layout; the
    channels-last layers read as if they were NCHW give another map (so the check can fail)."""
    from helpers import randomize_norms
    m = randomize_norms(tiny_convmlp(seed=3))
    x = torch.randn(2, 3, 67, 71)
    target = convmlp_layers(m)[layer]
    ours = class_activation_maps(m, x, 'gradcam', layer, target=[0, 2]).maps
    right = gradcam_by_hand(m, x, target.module, target.channels_last, torch.tensor([0, 2]))
    assert np.abs(ours - right).max() < 1e-4
    if target.channels_last:  # (B, h, w, C) taken as (B, C', h', w'): channels read as rows
        wrong = class_activation_maps(m, x, 'gradcam', layer, target=[0, 2], channels_last=False)
        assert wrong.map_size != right.shape or np.abs(wrong.maps - right).max() > 0.1


def test_module_names_and_readable_names_agree(model):
    x = torch.randn(2, 3, 64, 64)
    a = class_activation_maps(model, x, 'layercam', 'stages.2').maps      # the stage's NCHW output
    b = class_activation_maps(model, x, 'layercam', 'stage3').maps        # its last block's, channels-last
    c = class_activation_maps(model, x, 'layercam', 'stages.2.blocks.0').maps
    assert np.abs(a - b).max() < 1e-5 and np.abs(b - c).max() < 1e-5
    d = class_activation_maps(model, x, 'layercam', 'conv_stages.conv_blocks.0').maps
    e = class_activation_maps(model, x, 'layercam', 'conv_block').maps   # the conv stage's last (here only) block
    assert np.array_equal(d, e)


def test_conv_block_is_the_conv_stages_last_block_and_absent_without_one():
    """``conv_block``: the last conv bottleneck's branch (post-ReLU, stride 4), not the residual sum the stage
    forms outside it; the ablation's model without conv blocks has no such layer."""
    m = tiny_convmlp(n_conv_blocks=2)
    layer = convmlp_layers(m)['conv_block']
    assert layer.module is m.conv_stages.conv_blocks[1] and not layer.channels_last
    store = {}
    hook = layer.module.register_forward_hook(lambda mod, i, o: store.__setitem__('a', o))
    try:
        m(torch.randn(1, 3, 64, 64))
    finally:
        hook.remove()
    assert store['a'].shape == (1, 16, 16, 16) and store['a'].min() >= 0
    assert layer_map_sizes(m, 64, 64)['conv_block'] == (16, 16)
    assert 'conv_block' not in convmlp_layers(tiny_convmlp(conv_stage=False))


def test_eigen_methods_use_the_librarys_projection_up_to_its_sign():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
    from src.explain.cam import _first_component
    a = np.random.default_rng(0).normal(size=(3, 16, 9, 7)).astype(np.float32)
    ours, theirs = _first_component(a), get_2d_projection(a)
    for o, t in zip(ours, theirs):
        assert min(np.abs(o - t).max(), np.abs(o + t).max()) < 1e-4


def test_same_call_gives_maps_for_convmlp_and_torchvision_resnet18(model, resnet18):
    x = torch.randn(2, 3, 65, 47)
    for net, layer in ((model, 'stage3'), (resnet18, 'layer4')):
        for method in ('gradcam', 'layercam', 'eigencam'):
            r = class_activation_maps(net, x, method, target=1)
            assert r.layer == layer and r.maps.shape == (2, 65, 47) and np.isfinite(r.maps).all()
            assert r.classes == [1, 1] and 0 <= r.maps.min() and r.maps.max() <= 1 + 1e-6
    r = class_activation_maps(resnet18, x, 'gradcam', 'layer3')
    assert r.map_size == (5, 3)


def test_timm_model_default_layer_is_its_last_feature_level():
    import timm
    net = timm.create_model('resnet18', pretrained=False, num_classes=3).eval()
    r = class_activation_maps(net, torch.randn(1, 3, 64, 64), 'gradcam++')
    assert r.layer == 'layer4' and r.maps.shape == (1, 64, 64)


def test_the_model_is_left_as_it_was(model):
    x = torch.randn(2, 3, 64, 64)
    ref = class_activation_maps(model, x, 'gradcam', 'stage2', target=1)
    m = tiny_convmlp().train()
    m.head.weight.requires_grad_(False)
    m.head.bias.grad = torch.ones_like(m.head.bias)
    with torch.inference_mode():
        r = class_activation_maps(m, x, 'gradcam', 'stage2', target='square', names=CLASSES)
    assert m.training and not m.head.weight.requires_grad and m.tokenizer.block[0].weight.requires_grad
    assert torch.equal(m.head.bias.grad, torch.ones_like(m.head.bias)) and m.tokenizer.block[0].weight.grad is None
    assert r.classes == [1, 1] and np.array_equal(r.maps, ref.maps)  # eval mode inside, as `model`


def test_classes_by_index_name_or_one_per_image(model):
    x = torch.randn(3, 3, 64, 64)
    r = class_activation_maps(model, x, target=['triangle', 0, '1'], names=CLASSES)
    assert r.classes == [2, 0, 1]
    predicted = class_activation_maps(model, x)
    assert predicted.classes == model(x).argmax(-1).tolist()
    assert resolve_class('tabby', ['tench', 'tabby, tabby cat']) == 1


@pytest.mark.parametrize('kwargs,message', [
    (dict(layer='stages.0.blocks.0.channel_mlp1.fc1'), 'choose one of tokenizer, conv_block, conv_stage, stage1'),
    (dict(layer='stage9'), 'no CAM layer'),
    (dict(method='scorecam'), 'unknown CAM method'),
    (dict(target=3), 'out of range'),
    (dict(target='hexagon', names=CLASSES), "unknown class 'hexagon'"),
    (dict(target='square'), 'no class names'),
    (dict(target=[0, 1]), '2 target classes for 1 images'),
])
def test_bad_requests_raise_a_value_error_that_says_what_to_do(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        class_activation_maps(model, torch.randn(1, 3, 64, 64), **kwargs)


def test_headless_convmlp_explained_class_agnostically_only():
    headless = tiny_convmlp(classifier_head=False)
    x = torch.randn(1, 3, 64, 64)
    r = class_activation_maps(headless, x, 'eigencam')
    assert r.classes == [None] and r.maps.shape == (1, 64, 64) and r.map_size == (2, 2)
    with pytest.raises(ValueError, match='not class scores'):
        class_activation_maps(headless, x, 'gradcam')


# ---- the measured check ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def crops_root(tmp_path_factory):
    """The transfer workflow's crops of 240 + 60 scenes (its settings, fewer scenes), with masks."""
    return make_crops(tmp_path_factory.mktemp('cam') / 'cls', 240, 60, masks=True, **CROPS)


def test_masks_leave_the_crops_unchanged(crops_root, tmp_path):
    plain = make_crops(tmp_path / 'plain', 240, 60, **CROPS)
    files = sorted(p.relative_to(plain) for p in plain.rglob('*.png'))
    assert files == sorted(p.relative_to(crops_root) for p in crops_root.rglob('*.png') if p.parts[-4] != 'masks')
    assert all((plain / f).read_bytes() == (crops_root / f).read_bytes() for f in files)
    assert json.loads((crops_root / '.complete').read_text())['masks'] is True
    crops = C.load_crops(crops_root)
    assert crops.masks.shape == crops.images.shape[:3] and crops.masks.dtype == bool
    area = crops.masks.mean(axis=(1, 2))
    assert 0.15 < area.min() and area.max() < 0.75  # each crop shows its object, 1.2-1.6x its box
    assert crops.masks[:, 28:36, 28:36].mean() > 0.9  # centred on it
    with pytest.raises(Exception, match='--crop-masks'):
        C.load_crops(plain)


def test_fields_show_the_object_anywhere_at_the_crops_scale(tmp_path):
    """--crop-context 2: the object at the crops' scale (as many pixels) in a field twice their side, not centred."""
    single = dict(CROPS, objects=(1, 1))
    crops = C.load_crops(make_crops(tmp_path / 'crops', 12, 60, masks=True, **single))
    fields = C.load_crops(make_crops(tmp_path / 'fields', 12, 60, masks=True, context=2, **single))
    assert (crops.kind, fields.kind, fields.context) == ('crops', 'fields', 2.0)
    assert fields.images.shape[1:] == (128, 128, 3) and fields.masks.shape == (60, 128, 128)
    assert 0.85 < fields.masks.sum(axis=(1, 2)).mean() / crops.masks.sum(axis=(1, 2)).mean() < 1.15
    assert 0.06 < fields.masks.mean() < 0.12 and 0.25 < crops.masks.mean() < 0.5
    assert crops.masks[:, 28:36, 28:36].mean() > 0.9 and fields.masks[:, 60:68, 60:68].mean() < 0.5
    ys, xs = (np.array([np.nonzero(m)[i].mean() for m in fields.masks]) for i in (0, 1))
    assert xs.std() > 15 and ys.std() > 15 and xs.min() < 40 and xs.max() > 88  # spread over the field
    assert all(fields.masks[i].any() for i in range(60))  # every field holds its whole object's mask


def test_mask_share_and_centred_gaussian():
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2] = True
    maps = np.stack([np.ones((4, 4)), masks[0].astype(float)])
    assert np.allclose(C.mask_share(maps, masks), [0.5, 1.0])
    assert np.allclose(C.mask_share(np.zeros((1, 4, 4)), masks[:1]), [0.5])  # an empty map counts as uniform
    g = C.centred_gaussian(5, 7)
    assert g[2, 3] == 1 and np.allclose(g, g[::-1, ::-1])


def train_tiny(crops: C.Crops, steps: int = 150, seed: int = 0) -> ConvMLP:
    """The tiny ConvMLP trained on ``crops`` in this process: AdamW, one-cycle, flips and quarter turns; one
    thread (its ops are small: on a busy machine two threads waited on each other 7x longer)."""
    m = tiny_convmlp(seed)
    x, y = C.to_batch(crops.images, MEAN, STD), torch.from_numpy(crops.labels)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.15)
    with torch_threads(1):
        m.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (32,), generator=g)
            batch = torch.rot90(x[idx], int(torch.randint(0, 4, (1,), generator=g)), (2, 3))
            batch = (batch.flip(3) if torch.rand(1, generator=g) < .5 else batch).contiguous()  # one layout:
            loss = torch.nn.functional.cross_entropy(m(batch), y[idx], label_smoothing=0.1)  # oneDNN compiles once
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return m.eval()


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_maps_of_a_trained_convmlp_fall_on_the_object(crops_root):
    """A tiny ConvMLP trained here (150 steps, 20-40 s of CPU; about 80% top-1 on 119 held-out crops) puts
    more of its GradCAM mass on the object than a uniform map does (>= 1.3x the mask's area share; 1.5x
    measured) and than the same model with random weights (0.67x), at stage1 (8x8 at 64 px); GradCAM++ too
    (>= 1.1x; 1.2-2.2x over two training seeds, random weights 0.6x). Weaker than the issue's 2x: that is
    asked of the transfer workflow's classifier, measured in docs/cam.md (GradCAM 2.12x at conv_block on its
    crops, XGradCAM 2.35x there eigen-smoothed; on fields, fine-tuned, every gradient method 2.45-2.88x);
    this model is smaller, trained 150 steps, and its maps vary with the seed (GradCAM at conv_block 1.55x over
    three seeds; 1.6-1.8x with two conv blocks and 300 steps, a minute of training). Fields are no test here:
    this model stays at chance on them after 600 steps (4 minutes)."""
    train = C.load_crops(crops_root, 'train')
    trained = train_tiny(train)
    held_out = C.load_crops(crops_root)
    models = {'trained': trained, 'random': tiny_convmlp(seed=1)}
    result = C.measure(models, held_out, MEAN, STD, ['gradcam', 'gradcam++'], ['stage1', 'stage3'], log=lambda s: None)
    assert result['top1']['trained'] > 65, result['top1']
    area = result['area']
    assert 1.5 * area < result['centre'] < 2 * area  # the centre prior the docs report beside
    rows = {(r['layer'], r['method']): r for r in result['rows']}
    for method, fold, margin in (('gradcam', 1.3, 0.15), ('gradcam++', 1.1, 0.1)):
        row = rows['stage1', method]
        assert row['trained'] >= fold * area and row['trained'] >= row['random'] + margin, row
        assert rows['stage3', method]['map_size'] == [2, 2]
    table = C.markdown_table(result)
    assert '`stage1` (8x8)' in table and table.count('\n') == 1 + 2  # header, rule, a row per layer


# ---- the command line ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A classification run's checkpoint of a 3-class ConvMLP-S at 64 px (random weights), with class names."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('run') / 'best.pth.tar'
    torch.save(dict(state_dict=convmlp_s(num_classes=3).state_dict(), classes=list(CLASSES),
                    args=dict(model='convmlp_s', img_size=64, crop_pct=1.0)), path)
    return path


def test_cli_draws_one_picture_per_image_mirroring_folders(checkpoint, tmp_path, capsys):
    folder = tmp_path / 'in'
    (folder / 'sub').mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ('a.png', 'sub/b.jpg', 'sub/notes.txt'):
        if name.endswith('.txt'):
            (folder / name).write_text('not an image, skipped in a folder')
        else:
            Image.fromarray(rng.integers(0, 255, (47, 65, 3), dtype=np.uint8)).save(folder / name)
    single = tmp_path / 'c.png'
    Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(single)
    out = tmp_path / 'out'
    assert load_tool('cam').main([str(folder), str(single), '--checkpoint', str(checkpoint), '--class', 'square',
                                  '--method', 'gradcam++', '--out', str(out)]) == 0
    captured = capsys.readouterr()
    assert 'warning: layer stage3 gives a 2x2 map at 64x64 input' in captured.err
    assert 'stage1 (8x8)' in captured.err and 'wrote 3 picture(s)' in captured.out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*')) == ['a.png', 'c.png', 'sub', 'sub/b.png']
    with Image.open(out / 'a.png') as im:
        assert im.mode == 'RGB' and im.size[0] > 2 * 192 and im.size[1] > 192
    assert load_tool('cam').main([str(single), '--checkpoint', str(checkpoint), '--layer', 'conv_block',
                                  '--eigen-smooth', '--out', str(tmp_path / 'smooth')]) == 0
    assert 'gradcam +eigen_smooth at conv_block' in capsys.readouterr().out and (tmp_path / 'smooth/c.png').is_file()


@pytest.mark.parametrize('case,message', [
    ('missing', 'image or folder not found'),
    ('not_an_image', 'cannot read image'),
    ('empty_folder', 'no image files'),
    ('layer', "--layer: no CAM layer 'stage7'"),
    ('method', "unknown --method 'scorecam'"),
    ('class', "--class: unknown class 'hexagon'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, case, message):
    image = tmp_path / 'ok.png'
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'text.png').write_text('hello')
    argv = {'missing': [str(tmp_path / 'nope.png')], 'not_an_image': [str(tmp_path / 'text.png')],
            'empty_folder': [str(tmp_path / 'empty')], 'layer': [str(image), '--layer', 'stage7'],
            'method': [str(image), '--method', 'scorecam'], 'class': [str(image), '--class', 'hexagon']}[case]
    with pytest.raises(SystemExit) as stop:
        load_tool('cam').main([*argv, '--checkpoint', str(checkpoint), '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count('\n') == 1 and 'error: ' in err and message in err, err
    assert not (tmp_path / 'out').exists()


def test_localization_tool_writes_the_table_and_picture(checkpoint, crops_root, tmp_path, capsys):
    docs = tmp_path / 'docs'
    docs.mkdir()
    (docs / 'cam.md').write_text('# page\n<!-- cam_localization:start -->\nPLACEHOLDER\n<!-- cam_localization:end -->\nend\n')
    tool = load_tool('cam_localization')
    argv = ['--checkpoint', str(checkpoint), '--data', str(crops_root), '--limit', '12', '--layers', 'stage1,stage3',
            '--methods', 'gradcam,eigencam', '--figure-rows', 'trained:gradcam:stage1,random:eigencam:stage3',
            '--figure-crops', '3']
    assert tool.main([*argv, '--json', str(tmp_path / 'n.json'), '--docs', str(docs)]) == 0
    page = (docs / 'cam.md').read_text()
    assert 'PLACEHOLDER' not in page and '| `stage1` (8x8) |' in page and '| `stage3` (2x2) |' in page
    assert page.startswith('# page\n') and page.endswith('end\n') and '12 held-out crops' in page
    with Image.open(docs / 'cam_localization.png') as im:
        assert im.size[0] > 3 * 100
    numbers = json.loads((tmp_path / 'n.json').read_text())
    assert numbers['n'] == 12 and len(numbers['rows']) == 4 and numbers['command'].startswith('python tools/')
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        tool.main(['--checkpoint', str(checkpoint), '--data', str(tmp_path)])
    assert stop.value.code == 2 and capsys.readouterr().err.count('\n') == 1
    with pytest.raises(SystemExit) as stop:  # a page without the tag's block: refused before measuring
        tool.main([*argv, '--docs', str(docs), '--tag', 'cam_fields'])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count('\n') == 1 and '<!-- cam_fields:start -->' in err, err
    with pytest.raises(SystemExit) as stop:  # smoothing asked of numbers measured without it
        tool.main([*argv, '--reuse', str(tmp_path / 'n.json'), '--eigen-smooth'])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count('\n') == 1 and "smoothing none, not ['eigen']" in err, err
    assert tool.main([*argv, '--eigen-smooth', '--json', str(tmp_path / 'e.json')]) == 0
    smoothed = json.loads((tmp_path / 'e.json').read_text())
    assert smoothed['smooth'] == ['eigen'] and "smoothed by the library's eigen_smooth" in capsys.readouterr().out
    assert [r['trained'] for r in smoothed['rows']] != [r['trained'] for r in numbers['rows']]
