"""Convert ConvMLP checkpoints into the formats the ecosystem loads them from.

    # a timm / Hugging Face folder: config.json, model.safetensors, README.md (model card)
    python tools/convert.py timm convmlp_s hub/convmlp_s.in1k                # the release's ImageNet weights
    python tools/convert.py timm output/train/RUN/best.pth.tar hub/my_run --ema --hub-id me/convmlp_s_run
    # an mmdet 2.x / mmseg 0.x release file -> an mmdet 3 / mmseg 1 checkpoint (meta.dataset_meta, state_dict)
    python tools/convert.py mm configs/detection/retinanet_convmlp_s_fpn_1x_coco.py retinanet_convmlp_s_coco out.pth

SOURCE is a local file (``.pth``, ``.pth.tar``, ``.safetensors``), a URL or a zoo name (``src/zoo.py``).
The timm folder loads with ``timm.create_model('local-dir:FOLDER', pretrained=True)`` and, uploaded as it
is (``hf upload ORG/NAME FOLDER``), with ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)``; both
need ``import src.classification`` first, which registers the architecture that config.json names. The mm
file loads with mmdet's / mmseg's own tools (``init_detector``, ``init_model``, ``tools/test.py``) given
the config, whose ``custom_imports`` registers the backbone. Nothing is written unless the conversion
checked out (every key of the model, with its shape), and an existing output is never overwritten.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from src import zoo  # noqa: E402
from src.utils.atomic import atomic_save  # noqa: E402
from src.utils.errors import fail  # noqa: E402
from src.convmlp import ARCHS, ConvMLP  # noqa: E402
from src.utils.markdown import table  # noqa: E402
from src.weights import (CheckpointError, fetch, load_checkpoint_file, state_dict_mismatch,  # noqa: E402
                         unwrap_state_dict)
from src.utils.shutdown import exit_process  # noqa: E402

CITATION = """@article{li2021convmlp,
  title   = {ConvMLP: Hierarchical Convolutional MLPs for Vision},
  author  = {Li, Jiachen and Hassani, Ali and Walton, Steven and Shi, Humphrey},
  journal = {arXiv preprint arXiv:2109.04454},
  year    = {2021}
}"""


# ---- timm / Hugging Face folder -------------------------------------------------------------------
def _read(source: str) -> dict:
    """The checkpoint dict of ``source`` (path, URL or zoo name); bad input ends the tool."""
    try:
        return load_checkpoint_file(fetch(source, progress=True))
    except (CheckpointError, KeyError) as e:
        fail(e.args[0] if e.args else str(e))


def _find_variant(source: str, sd: dict) -> Optional[str]:
    """The release variant (convmlp_s/m/l) of a zoo name, else the one whose keys and shapes ``sd`` has."""
    for arch in zoo.VARIANTS:
        if source == arch or source.startswith(f'{arch}_') and source in zoo.weight_names():
            return arch
    num_classes = sd['head.weight'].shape[0] if 'head.weight' in sd else 0
    return next((a for a in zoo.VARIANTS if not state_dict_mismatch(
        ConvMLP(**ARCHS[a], num_classes=num_classes).state_dict(), sd)), None)


def _model_card(model, arch: Optional[str], source: str, ckpt: dict, ema: bool, hub_id: str,
                license_id: str) -> dict:
    """timm's model-card fields (``timm.models._hub.generate_readme``) with the paper's numbers."""
    cfg = model.pretrained_cfg
    name = cfg['architecture']
    params = sum(p.numel() for p in model.parameters()) / 1e6
    weights = f"the release's `{zoo.weight_url(source, base=zoo.RELEASE_BASE).rsplit('/', 1)[-1]}`" \
        if source in zoo.weight_names() else f'`{os.path.basename(source)}`'
    details = {'Model Type': 'Image classification / feature backbone',
               'Model Stats': {'Params (M)': f'{params:.2f}', 'Classes': model.num_classes,
                               'Image size': f'{cfg["input_size"][1]} x {cfg["input_size"][2]}'},
               'Papers': {'ConvMLP: Hierarchical Convolutional MLPs for Vision': 'https://arxiv.org/abs/2109.04454'},
               'Original': cfg.get('origin_url', 'https://github.com/SHI-Labs/Convolutional-MLPs')}
    pos = ckpt.get('position') or {}  # a classification.py run's epoch checkpoint: its evaluation of these weights
    rows = [r for r in ckpt.get('history') or [] if pos.get('step') == 0 and r.get('epoch') == pos.get('epoch')]
    top1 = rows[-1].get('ema_top1' if ema else 'top1') if rows else None
    if top1 is not None:
        weights += f' (top-1 {top1:.2f} on the run\'s held-out set after epoch {pos["epoch"]})'
    if source in zoo.VARIANTS:
        details['Model Stats']['GMACs'] = zoo.IMAGENET_PRECISE[source]['macs']
        details['Dataset'] = 'ImageNet-1k'
    imagenet = table(['Model', 'Params', 'MACs @224', 'ImageNet-1k top-1'],
                     [[zoo.NAMES[v], f'{zoo.IMAGENET[v]["params"]:.1f}M', f'{zoo.IMAGENET[v]["macs"]:.1f}G',
                       f'{zoo.IMAGENET[v]["top1"]:.1f}'] for v in zoo.VARIANTS])
    comparison = f"The paper's numbers (arXiv 2109.04454) for the release's weights:\n\n{imagenet}\n"
    if arch is not None:
        finetuned = table(['Dataset', 'Classes', 'Params', 'Top-1'],
                          [[zoo.DATASET_NAMES[d], zoo.FINETUNED_CLASSES[d], f'{zoo.FINETUNED[d][arch][1]:.2f}M',
                            f'{zoo.FINETUNED[d][arch][0]:.1f}'] for d in zoo.FINETUNED])
        comparison += f'\n{zoo.NAMES[arch]} fine-tuned from ImageNet-1k:\n\n{finetuned}\n'
    usage = f"""Load it with timm after registering ConvMLP (`import src.classification`, from a clone of
the ConvMLP repository or with it on `PYTHONPATH`):

```python
import timm
import src.classification  # registers {name} in timm
model = timm.create_model('hf-hub:{hub_id}', pretrained=True).eval()  # or 'local-dir:/path/to/this/folder'
cfg = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**cfg)
```
"""
    return dict(
        license=license_id, tags=['image-classification', 'timm', 'convmlp'],
        description=f'{zoo.NAMES.get(arch, name)} (`{name}`), {weights}'
                    f'{" (EMA weights)" if ema else ""}, converted by `tools/convert.py timm`.',
        details=details, usage=usage, comparison=comparison, citation=CITATION)


def convert_timm(args: argparse.Namespace) -> int:
    """Checkpoint -> folder with config.json, model.safetensors and README.md (timm's own writers)."""
    import timm
    from timm.data import resolve_data_config
    from timm.models import save_for_hf
    from timm.models._hub import generate_readme

    import src.classification  # noqa: F401  registers the ConvMLP names in timm
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f'{out} exists and is not an empty folder: choose a new output folder (nothing was written)')
    ckpt = _read(args.source)
    if args.ema and not isinstance(ckpt.get('state_dict_ema', ckpt.get('model_ema')), dict):
        fail(f'{args.source} holds no EMA weights (state_dict_ema): drop --ema, or convert a run trained '
             f'with --model-ema')
    sd = unwrap_state_dict(ckpt, use_ema=args.ema)
    name = args.model or ckpt.get('arch') or _find_variant(args.source, sd)
    if name is None:
        fail(f'{args.source} is not a ConvMLP-S/M/L state dict: name the architecture with --model '
             f'(one of {", ".join(timm.list_models("convmlp*"))})')
    if name not in timm.list_models('convmlp*'):
        fail(f'unknown model {name!r}: --model takes one of {", ".join(timm.list_models("convmlp*"))}')
    model = timm.create_model(name, num_classes=sd['head.weight'].shape[0] if 'head.weight' in sd else 0)
    problem = state_dict_mismatch(model.state_dict(), sd)
    if problem:
        fail(f'{args.source} does not fit {name} (other variant? pass --model): {problem}')
    model.load_state_dict(sd)
    if isinstance(ckpt.get('args'), dict):  # a classification.py run: the data config it evaluated with
        model.pretrained_cfg.update(resolve_data_config(ckpt['args'], model=model))
    model.pretrained_cfg.update(url=None, license=args.license, num_classes=model.num_classes,
                                tag=model.pretrained_cfg.get('tag') if args.source in zoo.VARIANTS else None)
    hub_id = args.hub_id or f'ORG/{out.name}'
    arch = next((v for v in zoo.VARIANTS if name in (v, f'{v}_classification')), None)  # a release model
    card = _model_card(model, arch, args.source, ckpt, args.ema, hub_id, args.license)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', dir=out.parent))
    try:
        save_for_hf(model, tmp, safe_serialization=True)
        (tmp / 'README.md').write_text(generate_readme(card, hub_id.split('/')[-1]))
        os.replace(tmp, out)  # the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f'wrote {out}/ (config.json, model.safetensors, README.md): {name}, {model.num_classes} classes, '
          f'from {args.source}{" (EMA)" if args.ema else ""}')
    return 0


# ---- mmdet 3 / mmseg 1 checkpoint -----------------------------------------------------------------
def convert_mm(args: argparse.Namespace) -> int:
    """mmdet 2.x / mmseg 0.x (or mmengine run) checkpoint -> ``{'meta': {'dataset_meta'}, 'state_dict'}``
    for ``args.config``'s model, checked by a strict load."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from src.mm.checkpoints import convert_legacy_checkpoint, run_checkpoint_globals
    if not os.path.isfile(args.config):
        fail(f'config not found: {args.config}')
    if os.path.exists(args.out):
        fail(f'{args.out} exists: choose a new output file (nothing was written)')
    cfg = Config.fromfile(args.config)  # its custom_imports register the ConvMLP backbone
    scope = cfg.get('default_scope')
    tasks = {'mmdet': 'detection', 'mmseg': 'segmentation'}
    if scope not in tasks:
        fail(f'{args.config} is not an mmdet or mmseg config (default_scope {scope!r})')
    cfg.model.backbone.init_cfg = None  # the checkpoint brings every weight: no ImageNet download
    init_default_scope(scope)
    model = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS.build(cfg.model)
    with torch.serialization.safe_globals(run_checkpoint_globals()):  # mmengine run files hold a few more types
        ckpt = _read(args.source)
    try:
        sd, dataset_meta = convert_legacy_checkpoint(ckpt, model, tasks[scope])
    except CheckpointError as e:
        fail(f'{args.source} vs {args.config}: {e}')
    model.load_state_dict(sd, strict=True)
    meta = {'converted_from': os.path.basename(args.source), f'{scope}_version': __import__(scope).__version__}
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    else:
        print(f'note: {args.source} names no classes; the config\'s dataset meta will apply', file=sys.stderr)
    atomic_save({'meta': meta, 'state_dict': {k: v.contiguous() for k, v in sd.items()}}, args.out)
    print(f'wrote {args.out}: {len(sd)} tensors for {os.path.basename(args.config)}'
          f'{", " + str(len(dataset_meta["classes"])) + " classes" if dataset_meta else ""}')
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    t = sub.add_parser('timm', help='checkpoint -> timm / Hugging Face folder')
    t.add_argument('source', help='checkpoint: path, URL or zoo name (release .pth, a run\'s best.pth.tar, ...)')
    t.add_argument('out', help='new folder to write (config.json, model.safetensors, README.md)')
    t.add_argument('--model', help='timm name of the architecture (default: the run\'s, else found from the '
                                   'checkpoint\'s shapes among convmlp_s/m/l)')
    t.add_argument('--ema', action='store_true', help='take the EMA weights of a training checkpoint')
    t.add_argument('--hub-id', help='ORG/NAME it will have on the Hugging Face Hub (for the model card)')
    t.add_argument('--license', default='apache-2.0',
                   help="license of the weights, for the model card (default: apache-2.0, as timm's pretrained "
                        'configs here say; see the README on licenses)')
    t.set_defaults(run=convert_timm)
    m = sub.add_parser('mm', help='mmdet 2.x / mmseg 0.x checkpoint -> mmdet 3 / mmseg 1 checkpoint')
    m.add_argument('config', help='the model\'s config (configs/detection/... or configs/segmentation/...)')
    m.add_argument('source', help='checkpoint: path, URL or zoo name (e.g. retinanet_convmlp_s_coco)')
    m.add_argument('out', help='new .pth file to write')
    m.set_defaults(run=convert_mm)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    exit_process(main())
