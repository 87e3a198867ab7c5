"""Export ConvMLP to ONNX (dynamic batch, height, width) and TorchScript, or to a torch.export program, each
checked against the eager model before the file is written.

    python tools/export.py --model convmlp_s                       # released weights -> exports/convmlp_s.{onnx,ts.pt}
    python tools/export.py --model convmlp_l --fuse --no-head      # BatchNorm folded; four feature maps out
    python tools/export.py --checkpoint run/model_best.pth --format onnx --img-size 256
    python tools/export.py --model convmlp_s --format pt2          # torch.export program -> exports/convmlp_s.pt2
    python tools/export.py --random --out-dir /tmp/x               # random weights, no download

Each file carries the class names (none with --no-head) and the preprocessing of the weights (a run's own,
else timm's for the model) in its metadata (src/deploy/metadata.py): tools/predict.py --onnx / --torchscript /
--pt2 serves it by them. A .pt2 (PyTorch's successor to TorchScript, written on request) takes any batch and
sides of 33 px and more (the ablation rows with PatchMerge: the traced sides only).

Each format is checked at the export size and at every --check-size (default: another height and width
with batch 2, which exercises the dynamic axes): the max abs difference to the eager model is printed and
must be <= --tol (default 1e-4, fp32), else nothing is written and the exit code is 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from src.utils.atomic import atomic_write  # noqa: E402
from src.model_options import (add_model_args, build_model, checkpoint_state, class_names,  # noqa: E402
                                parse_size, run_data_config)
from src.utils.errors import fail, report  # noqa: E402
from src.deploy.export import (PROGRAM_MIN_SIDE, onnx_bytes, onnx_max_diff, output_names,  # noqa: E402
                               program_bytes, program_max_diff, program_sides_dynamic, torchscript_bytes,
                               torchscript_max_diff)
from src.deploy.metadata import archive_extra_files, onnx_with_metadata, serving_metadata  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402

FORMATS = {'onnx': ('.onnx', onnx_bytes, onnx_max_diff),
           'torchscript': ('.ts.pt', torchscript_bytes, torchscript_max_diff),
           'pt2': ('.pt2', program_bytes, program_max_diff)}
DEFAULT_FORMATS = ['onnx', 'torchscript']


def check_inputs(size: Tuple[int, int], extra: Sequence[Tuple[int, int]], seed: int = 0) -> List[torch.Tensor]:
    """Random images: one at the export size (batch 1), then batch 2 at each extra size."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, *size, generator=g)] + [torch.randn(2, 3, *s, generator=g) for s in extra]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument('--format', nargs='+', choices=sorted(FORMATS), default=DEFAULT_FORMATS,
                        help='what to write (default: onnx torchscript; pt2: a torch.export program)')
    parser.add_argument('--fuse', action='store_true', help='fold BatchNorm into the convs first (inference only)')
    parser.add_argument('--no-head', action='store_true',
                        help='export the backbone: four feature maps (strides 4, 8, 16, 32) instead of logits')
    parser.add_argument('--num-classes', type=int, default=1000, metavar='N',
                        help='classes of the head (must match --checkpoint; default 1000)')
    parser.add_argument('--img-size', type=parse_size, default=(224, 224), metavar='N|HxW',
                        help='input size the export is traced at (default 224)')
    parser.add_argument('--check-size', type=parse_size, nargs='*', metavar='N|HxW',
                        help='more input sizes to check at (batch 2); default: --img-size + (32, -32)')
    parser.add_argument('--tol', type=float, default=1e-4, help='max abs difference allowed (default 1e-4)')
    parser.add_argument('--out-dir', type=Path, default=Path('exports'), help='where to write (default exports/)')
    args = parser.parse_args(argv)
    h, w = args.img_size
    extra = args.check_size if args.check_size is not None else [(h + 32, max(32, w - 32))]
    if min(min(s) for s in [args.img_size, *extra]) < 32:
        fail('input sizes must be at least 32x32 (ConvMLP downsamples by 32)')
    if 'pt2' in args.format and min(min(s) for s in [args.img_size, *extra]) < PROGRAM_MIN_SIDE:
        fail(f'--format pt2 needs input sizes of at least {PROGRAM_MIN_SIDE}x{PROGRAM_MIN_SIDE} (torch.export fixes a '
             f'32 px side): give a larger --img-size / --check-size, or drop pt2')

    model, weights = build_model(args, need_head=not args.no_head, num_classes=args.num_classes,
                                 classifier_head=not args.no_head)
    if args.fuse:
        if not hasattr(model, 'fuse'):
            fail('--fuse needs ConvMLP.fuse() (src/fuse.py), which this checkout lacks: export without --fuse')
        model = model.fuse()
    state = checkpoint_state(args.checkpoint)
    names = None if args.no_head else class_names(state, args.num_classes, args.checkpoint or args.model)[0]
    metadata = serving_metadata(args.model, weights, output_names(model), run_data_config(model, state), names)
    stem = args.model + ('_fused' if args.fuse else '') + ('_features' if args.no_head else '')
    inputs = check_inputs(args.img_size, extra)
    print(f'{args.model} ({weights}){" fused" if args.fuse else ""}, '
          f'{"feature maps" if args.no_head else "logits"} out, traced at {h}x{w}')
    failed = False
    for fmt in args.format:
        suffix, serialise, max_diff = FORMATS[fmt]
        # the class names and preprocessing inside (tools/predict.py reads them)
        if fmt == 'onnx':
            data = onnx_with_metadata(serialise(model, inputs[0]), metadata)
        else:
            data = serialise(model, inputs[0], archive_extra_files(metadata))
        checked = inputs
        if fmt == 'pt2' and not program_sides_dynamic(model):
            print(f'  pt2         height and width fixed at {h}x{w} (PatchMerge pads to even sizes, which torch.export '
                  f'cannot keep symbolic): checked at that size only')
            checked = [inputs[0], inputs[0].repeat(2, 1, 1, 1)]
        diffs = max_diff(data, model, checked)
        for shape, diff in diffs.items():
            print(f'  {fmt:<11} input {"x".join(map(str, shape))}: max abs diff {diff:.2e}')
        path = args.out_dir / f'{stem}{suffix}'
        if max(diffs.values()) > args.tol:
            report(f'{fmt} output differs from eager by more than --tol {args.tol:g}; {path} not written')
            failed = True
            continue
        with atomic_write(path) as f:
            f.write(data)
        print(f'  wrote {path} ({len(data) / 1e6:.1f} MB)')
    return 1 if failed else 0


if __name__ == '__main__':
    exit_process(main())
