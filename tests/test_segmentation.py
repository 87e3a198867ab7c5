"""ConvMLP in mmsegmentation 1.x: configs, backbone init, checkpoint conversion, launcher end to end."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('mmseg')

from dense_e2e import ROOT, build_model, build_optimizer, count_params, dist  # noqa: E402
from src import zoo  # noqa: E402
from src.convmlp import convmlp_l  # noqa: E402
from src.mm.checkpoints import load_checkpoint_for_test
from src.mm.run import main  # noqa: E402
from src.studies.shapes import SEG_CLASSES, make_shapes  # noqa: E402

FPN = 'configs/segmentation/shapes/fpn_convmlp_s_shapes.py'


def test_adamw_runs_as_one_fused_kernel():
    config = 'configs/segmentation/fpn_convmlp_s_512x512_40k_ade20k.py'
    optimizer = build_optimizer(config, build_model(config, 'mmseg'))
    assert type(optimizer).__name__ == 'AdamW' and all(g['fused'] for g in optimizer.param_groups)


@pytest.mark.parametrize('variant', ['s', 'm', 'l'])
def test_params_match_paper(variant):
    model = build_model(f'configs/segmentation/fpn_convmlp_{variant}_512x512_40k_ade20k.py', 'mmseg')
    paper = zoo.SEMANTIC_FPN[f'convmlp_{variant}']['params']
    assert abs(count_params(model) - paper) <= 0.06, (count_params(model), paper)


def test_backbone_loads_every_imagenet_weight(tmp_path):
    imagenet = convmlp_l()
    path = tmp_path / 'convmlp_l_imagenet.pth'
    torch.save({'model': imagenet.state_dict()}, path)
    seg = build_model('configs/segmentation/fpn_convmlp_l_512x512_40k_ade20k.py', 'mmseg',
                      init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    seg.init_weights()
    reference = imagenet.state_dict()
    loaded = seg.backbone.state_dict()
    assert len(loaded) == len([k for k in reference if not k.startswith(('norm.', 'head.'))])
    for k, v in loaded.items():
        assert torch.equal(v, reference[k]), k
    maps = seg.backbone.eval()(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [96, 192, 384, 768]


def test_mmseg0_checkpoint_converts(tmp_path):
    """A checkpoint saved by mmseg 0.x (meta with CLASSES and PALETTE, DDP prefix) loads strictly."""
    trained = build_model(FPN, 'mmseg')
    path = tmp_path / 'mmseg0.pth'
    palette = [[0, 0, 0], [220, 20, 60], [0, 130, 200], [255, 180, 0]]
    torch.save({'meta': {'mmseg_version': '0.30.0', 'CLASSES': SEG_CLASSES, 'PALETTE': palette, 'iter': 40000},
                'state_dict': {f'module.{k}': v for k, v in trained.state_dict().items()}}, path)
    fresh = build_model(FPN, 'mmseg')
    meta = load_checkpoint_for_test(str(path), fresh, 'segmentation')
    assert meta == {'classes': SEG_CLASSES, 'palette': [tuple(c) for c in palette]}
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_shapes_ade_layout(tmp_path):
    root = make_shapes(tmp_path, num_train=2, num_val=1, size=(64, 48)) / 'ade'
    label = np.asarray(Image.open(root / 'annotations/training/000000.png'))
    assert label.shape == (48, 64) and set(np.unique(label)) <= {0, 1, 2, 3, 4}
    assert {0, 1} <= set(np.unique(label))  # outlines (ignored after reduce_zero_label) and background
    assert (root / 'images/validation/000000.jpg').is_file()


def test_missing_annotation_folder_is_named(tmp_path, capsys):
    root = make_shapes(tmp_path, num_train=1, num_val=1, size=(64, 48)) / 'ade'
    (root / 'annotations/validation/000000.png').unlink()
    (root / 'annotations/validation').rmdir()
    assert main('segmentation', 'train', [str(ROOT / FPN), '--data-root', str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f'segmentation/train.py: error: seg_map_path folder not found: {root / "annotations/validation"} '
                   f'(of val_dataloader)')


def _val_metrics(text: str) -> dict:
    """aAcc / mIoU / mAcc of the last evaluation mmseg printed."""
    rows = re.findall(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+mAcc: ([\d.]+)', text)
    return dict(zip(('aAcc', 'mIoU', 'mAcc'), map(float, rows[-1]))) if rows else {}


@pytest.mark.slow
def test_dist_train_and_test_mmseg0_checkpoint(tmp_path, capsys):
    """Through dist_segmentation.sh with 2 CPU processes (SyncBN falls back to BN on gloo): 2 iterations +
    mIoU; then test.py evaluates the result re-saved in mmseg 0.x layout. (Two processes resuming through the
    same launcher: test_dense_resume.py.)"""
    data = make_shapes(tmp_path / 'shapes', num_train=4, num_val=2, size=(64, 64)) / 'ade'
    work = tmp_path / 'work'
    tiny = ['--cfg-options', 'train_dataloader.batch_size=1', 'model.data_preprocessor.size=(64,64)',
            'train_dataloader.dataset.pipeline.3.crop_size=(64,64)', 'default_hooks.logger.interval=1']
    first = dist('segmentation', FPN, data, '--work-dir', work, *tiny, 'train_cfg.max_iters=2',
                 'train_cfg.val_interval=2')
    assert 'Iter(train) [2/2]' in first.out and 'SyncBatchNorm' not in first.out
    assert 0 <= _val_metrics(first.out)['mIoU'] <= 100
    for name in SEG_CLASSES:  # the per-class IoU table
        assert re.search(rf'\|\s+{name}\s+\|\s+[\d.]+\s+\|', first.out), name

    from src.mm.checkpoints import run_checkpoint_globals
    with torch.serialization.safe_globals(run_checkpoint_globals()):
        run_file = torch.load(work / 'iter_2.pth', map_location='cpu', weights_only=True)
    assert run_file['meta']['iter'] == 2
    legacy = tmp_path / 'mmseg0.pth'
    torch.save({'meta': {'mmseg_version': '0.30.0', 'CLASSES': SEG_CLASSES, 'iter': 2},
                'state_dict': run_file['state_dict']}, legacy)
    capsys.readouterr()
    assert main('segmentation', 'test', [str(ROOT / FPN), str(legacy), '--data-root', str(data),
                                         '--work-dir', str(tmp_path / 'test')]) == 0
    out = capsys.readouterr().out
    assert f'mIoU of {legacy}:' in out
    assert 0 <= float(re.search(r'^mIoU: ([\d.]+)$', out, re.M).group(1)) <= 100
    # the run wrote its config into its own folder, and left no visualizer behind for the next run in this
    # process (mmengine keeps one per name, and the configs name theirs 'visualizer')
    assert len(list((tmp_path / 'test').glob('*/vis_data/config.py'))) == 1
    from mmengine.visualization import Visualizer
    assert not Visualizer.check_instance_created('visualizer')
