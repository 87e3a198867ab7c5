"""ConvMLP in mmdetection 3.x: configs, backbone init, checkpoint conversion, launchers end to end."""
import pytest
import torch

pytest.importorskip('mmdet')

from dense_e2e import ROOT, build_model, build_optimizer, count_params, dist, metrics, run  # noqa: E402
from src import zoo  # noqa: E402
from src.convmlp import convmlp_s  # noqa: E402
from src.mm.run import main  # noqa: E402
from src.studies.shapes import CLASSES, make_shapes  # noqa: E402
from src.weights import CheckpointError  # noqa: E402

RETINANET = 'configs/detection/shapes/retinanet_convmlp_s_fpn_shapes.py'
MASKRCNN = 'configs/detection/shapes/maskrcnn_convmlp_s_fpn_shapes.py'


def test_adamw_runs_as_one_fused_kernel():
    config = 'configs/detection/retinanet_convmlp_s_fpn_1x_coco.py'
    optimizer = build_optimizer(config, build_model(config, 'mmdet'))
    assert type(optimizer).__name__ == 'AdamW' and all(g['fused'] for g in optimizer.param_groups)


@pytest.mark.parametrize('variant', ['s', 'm', 'l'])
@pytest.mark.parametrize('det', ['retinanet', 'maskrcnn'])
def test_params_match_paper(det, variant):
    model = build_model(f'configs/detection/{det}_convmlp_{variant}_fpn_1x_coco.py', 'mmdet')
    paper = (zoo.RETINANET if det == 'retinanet' else zoo.MASKRCNN)[f'convmlp_{variant}']['params']
    assert abs(count_params(model) - paper) <= 0.06, (count_params(model), paper)


def test_backbone_maps_and_pretrained_init(tmp_path, http_server, hub_dir):
    """The detector's backbone returns the 4 maps and loads *every* weight of an ImageNet-layout file,
    from a path or a URL; a file missing one backbone tensor is refused."""
    imagenet = convmlp_s()  # with norm and head, as the release's ImageNet checkpoints
    path = tmp_path / 'convmlp_s_imagenet.pth'
    torch.save({'state_dict': imagenet.state_dict()}, path)
    base, routes = http_server
    routes['/convmlp_s_imagenet.pth'] = ('ok', path.read_bytes())
    for source in (str(path), f'{base}/convmlp_s_imagenet.pth'):
        det = build_model(RETINANET, 'mmdet', init_cfg=dict(type='Pretrained', checkpoint=source))
        det.init_weights()
        backbone = det.backbone.state_dict()
        assert backbone and not any(k.startswith(('norm.', 'head.')) for k in backbone)
        reference = imagenet.state_dict()
        for k, v in backbone.items():
            assert torch.equal(v, reference[k]), k
        assert len(backbone) == len([k for k in reference if not k.startswith(('norm.', 'head.'))])
    maps = det.backbone.eval()(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 256, 4, 6), (1, 512, 2, 3)]

    partial = imagenet.state_dict()
    del partial['stages.1.blocks.0.connect.weight']
    torch.save(partial, path)
    det = build_model(RETINANET, 'mmdet', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match='1 missing keys'):
        det.init_weights()


def test_mask_rcnn_rois_see_the_features_where_they_are():
    """The RoI heads read the FPN maps at the boxes' places: mmcv's RoIAlign indexes raw NCHW memory,
    so channels-last maps (the model's own layout) came out scrambled and Mask R-CNN learned nothing.
    Reference: torchvision's roi_align, which reads any layout, on the same maps."""
    from torchvision.ops import roi_align
    torch.manual_seed(0)
    det = build_model(MASKRCNN, 'mmdet').eval()
    with torch.no_grad():
        maps = det.backbone(torch.randn(2, 3, 96, 128))
        assert all(m.is_contiguous() for m in maps)
        feats = det.neck(maps)
        rois = torch.tensor([[0, 8., 4., 60., 50.], [1, 30., 20., 90., 80.], [1, 70., 10., 120., 40.]])
        extractor = det.roi_head.bbox_roi_extractor  # every RoI smaller than 112 px: the stride-4 level
        ours = extractor(feats[:extractor.num_inputs], rois)
        reference = roi_align(feats[0].contiguous(memory_format=torch.channels_last), rois, 7, 1 / 4, 0, aligned=True)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_mmdet2_checkpoint_converts(tmp_path):
    """A checkpoint saved by mmdet 2.x (meta with CLASSES, classifier norm in the backbone) loads strictly."""
    from src.mm.checkpoints import load_checkpoint_for_test
    trained = build_model(MASKRCNN, 'mmdet')
    sd = dict(trained.state_dict())
    sd['backbone.norm.weight'], sd['backbone.norm.bias'] = torch.ones(512), torch.zeros(512)
    path = tmp_path / 'mmdet2.pth'
    torch.save({'meta': {'mmdet_version': '2.28.2', 'CLASSES': CLASSES, 'epoch': 12, 'iter': 88000,
                         'config': "model = dict(type='MaskRCNN')"}, 'state_dict': sd,
                'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-5, 'params': [0]}]}}, path)
    fresh = build_model(MASKRCNN, 'mmdet')
    meta = load_checkpoint_for_test(str(path), fresh, 'detection')
    assert meta == {'classes': CLASSES}
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    del sd['roi_head.mask_head.conv_logits.weight']
    torch.save({'meta': {}, 'state_dict': sd}, path)
    with pytest.raises(CheckpointError, match='1 missing keys'):
        load_checkpoint_for_test(str(path), fresh, 'detection')


def test_bad_data_paths_give_one_clear_error(tmp_path, capsys):
    config = str(ROOT / RETINANET)
    assert main('detection', 'train', [config, '--data-root', str(tmp_path / 'nowhere')]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'detection/train.py: error: dataset root not found: {tmp_path / "nowhere"} (of train_dataloader; ' \
                  f'set it with DATA_ROOT / --data-root)'
    (tmp_path / 'train2017').mkdir()
    assert main('detection', 'train', [config, '--data-root', str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and str(tmp_path / 'annotations/instances_train2017.json') in err
    proc = run(['bash', ROOT / 'dist_detection.sh', RETINANET, 2, tmp_path / 'nowhere'])
    assert proc.returncode == 2 and f'dataset root not found: {tmp_path / "nowhere"}' in proc.stderr
    assert proc.stderr.startswith('usage: dist_detection.sh CONFIG NUM_PROC DATA_ROOT')
    proc = run(['bash', ROOT / 'dist_detection.sh', RETINANET, 64, tmp_path])
    assert proc.returncode == 2 and 'CONVMLP_ALLOW_OVERSUBSCRIBE=1' in proc.stderr
    proc = run(['bash', ROOT / 'dist_detection.sh', RETINANET, 1, tmp_path], NNODES='2', NODE_RANK='2')
    assert proc.returncode == 2 and 'NODE_RANK (2) must be below NNODES (2)' in proc.stderr


def _no_score_thr(config: str) -> str:
    """No score threshold: even a barely trained model then has detections to evaluate."""
    return f'model.test_cfg.{"rcnn." if "maskrcnn" in config else ""}score_thr=0.0'


def _tiny(config: str) -> list:
    """cfg-options for 2 iterations per epoch on 4 images with 2 processes, at 64 px."""
    return ['--cfg-options', 'train_dataloader.batch_size=1', 'val_dataloader.batch_size=1', _no_score_thr(config),
            'train_dataloader.dataset.pipeline.2.scale=(64,64)', 'val_dataloader.dataset.pipeline.1.scale=(64,64)',
            'train_cfg.val_interval=1', 'default_hooks.logger.interval=1']


@pytest.mark.slow
@pytest.mark.parametrize('config', [MASKRCNN], ids=['maskrcnn'])
def test_dist_train_and_test_mmdet2_checkpoint(config, tmp_path, capsys):
    """Through dist_detection.sh with 2 CPU processes: 2 iterations + COCO evaluation; then test.py evaluates
    the result re-saved in mmdet 2.x layout. Mask R-CNN-S (boxes and masks); RetinaNet-S trains through the
    launcher in test_transfer.py's smoke run; runs resume in test_dense_resume.py."""
    data = make_shapes(tmp_path / 'shapes', num_train=4, num_val=2, size=(64, 64)) / 'coco'
    work = tmp_path / 'work'
    kinds = ['bbox', 'segm'] if 'maskrcnn' in config else ['bbox']
    first = dist('detection', config, data, '--work-dir', work, *_tiny(config), 'train_cfg.max_epochs=1')
    assert 'Epoch(train) [1][2/2]' in first.out
    for kind in kinds:
        assert f'Evaluate annotation type *{kind}*' in first.out
        assert {f'{kind}_mAP', f'{kind}_mAP_50', f'{kind}_mAP_75'} <= set(metrics(first.out, 'coco'))

    from src.mm.checkpoints import run_checkpoint_globals
    with torch.serialization.safe_globals(run_checkpoint_globals()):
        run_file = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=True)
    assert (run_file['meta']['epoch'], run_file['meta']['iter']) == (1, 2)
    legacy = tmp_path / 'mmdet2.pth'
    torch.save({'meta': {'mmdet_version': '2.28.2', 'CLASSES': CLASSES, 'epoch': 1, 'iter': 2},
                'state_dict': run_file['state_dict']}, legacy)
    capsys.readouterr()
    assert main('detection', 'test', [str(ROOT / config), str(legacy), '--data-root', str(data),
                                      '--work-dir', str(tmp_path / 'test'), '--cfg-options',
                                      'test_dataloader.dataset.pipeline.1.scale=(64,64)', _no_score_thr(config)]) == 0
    out = capsys.readouterr().out
    assert f'COCO bbox/segm AP of {legacy}:' in out
    got = metrics(out, 'coco')
    for kind in kinds:
        assert 0 <= got[f'{kind}_mAP'] <= got[f'{kind}_mAP_50'] <= 1, got
