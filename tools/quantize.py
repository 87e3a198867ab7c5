"""A ConvMLP classifier to an int8 model (static quantization, calibrated on images of a folder), checked
against fp32 and evaluated on held-out images: an ONNX model by ONNX Runtime's quantizer (default), or with
--backend pt2e a torch.export program by PyTorch's own PT2E path (torchao's x86 inductor quantizer; run
compiled by inductor, faster on x86 CPUs: docs/deployment.md).

    python tools/quantize.py --checkpoint output/demo_digits/best.pth.tar --calibration-dir data/digits/train \\
        --eval-dir data/digits/validation --out exports/digits_int8.onnx
    python tools/quantize.py --model convmlp_s --calibration-dir imagenet/train --eval-dir imagenet/val \\
        --calibration-images 512 --out exports/convmlp_s_int8.onnx      # the release's ImageNet weights
    python tools/quantize.py --checkpoint RUN/best.pth.tar --headless --calibration-dir ... --out x.onnx
    python tools/quantize.py --checkpoint RUN/best.pth.tar --backend pt2e --calibration-dir ... --out x.pt2

Weights: a classification.py run's checkpoint (its architecture, classes and data config), a release file,
or a zoo name. The calibration images are a seeded sample of --calibration-dir (an ImageFolder's training
split, or any folder of images), preprocessed as the model's data config says; another sample of it, never
used for calibration, is the check slice. With --keep-fp32 auto the convolutions kept in fp32 widen (first
conv, tokenizer, whole stem) until int8 agrees with fp32 on the check slice (top-1 agreement >=
--min-agreement; --headless: every dense map's mean cosine >= --min-cosine); if none does, nothing is
written and the exit code is 1. --eval-dir: fp32 against int8 on a held-out folder (top-1 of each with the
class folders as labels, agreement, largest logit difference; --headless: cosine of each map).

Writes OUT (the int8 model; dynamic batch, height and width; its class names and preprocessing stored in it:
src/deploy/metadata.py), OUT's .report.json (everything: files, calibration images, arguments, the nodes kept
in fp32 and why, op types in int8 and fp32, the check and the evaluation) and .report.md (the short version).
Bad input (a missing or empty folder, an unknown model, a checkpoint that does not fit, an output that exists
or cannot be written): one error line, exit code 2, nothing written.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.deploy.int8_build import (AUTO, BACKENDS, build_int8, build_summary, check_disjoint, evaluate,  # noqa: E402
                                   fidelity_table, held_out_labels, report_markdown, split_calibration)
from src.deploy.export import output_names  # noqa: E402
from src.deploy.metadata import PREPROCESSING_KEYS, serving_metadata  # noqa: E402
from src.deploy.quantize import KEEP_FP32_ORDER, Recipe  # noqa: E402
from src.model_options import add_model_args, load_classifier  # noqa: E402
from src.utils.atomic import atomic_write  # noqa: E402
from src.utils.errors import OneLineParser, UsageError, fail, report  # noqa: E402
from src.utils.images import list_image_folder  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None):
    p = OneLineParser(description=__doc__.split('\n\n')[0])
    add_model_args(p)
    p.set_defaults(model=None)  # None: the run's architecture (from its checkpoint), else convmlp_s
    p.add_argument('--use-ema', action='store_true', help="a run's EMA weights (needs a run with --model-ema)")
    p.add_argument('--calibration-dir', type=Path, required=True, metavar='DIR',
                   help='images to calibrate on (e.g. the training split), directly or in class sub-folders')
    p.add_argument('--calibration-images', type=int, default=256, metavar='N',
                   help='images of --calibration-dir to calibrate on (default 256; fewer if it has fewer)')
    p.add_argument('--check-images', type=int, default=256, metavar='N',
                   help='other images of --calibration-dir to check int8 against fp32 on (default 256, at most '
                        'a third of the folder; 0: no check)')
    p.add_argument('--eval-dir', type=Path, metavar='DIR',
                   help='held-out images to evaluate fp32 against int8 on (class sub-folders give top-1)')
    p.add_argument('--headless', action='store_true',
                   help="the backbone's four dense maps (strides 4-32) as outputs instead of logits")
    p.add_argument('--keep-fp32', default=AUTO, choices=[AUTO, *KEEP_FP32_ORDER],
                   help='convolutions left in fp32 (default auto: the narrowest of first_conv, tokenizer, stem '
                        'whose check meets the target)')
    p.add_argument('--min-agreement', type=float, default=99., metavar='PCT',
                   help='target of the check: top-1 agreement with fp32 in %% (default 99)')
    p.add_argument('--min-cosine', type=float, default=0.995,
                   help="target of the check with --headless: each dense map's mean cosine (default 0.995)")
    p.add_argument('--moving-average', action='store_true',
                   help="calibrate each activation's range as a moving average of the batches' min/max (EMA 0.01) "
                        'instead of the min/max over all calibration images')
    p.add_argument('--seed', type=int, default=0, help='of the calibration and check samples')
    p.add_argument('--backend', choices=BACKENDS, default='onnxruntime',
                   help="onnxruntime (default: ONNX Runtime's quantizer, an .onnx file any ONNX runtime loads) or "
                        "pt2e (PyTorch's own: torchao's x86 inductor quantizer, a torch.export .pt2 program run "
                        "compiled by inductor; faster on x86, needs torch + torchao + a C++ compiler to run)")
    p.add_argument('--threads', type=int, help="threads of the runs (default: OMP_NUM_THREADS, else one per core)")
    p.add_argument('--out', type=Path, help='the int8 model (default exports/MODEL[_features]_int8.onnx, with '
                   '--backend pt2e .pt2)')
    p.add_argument('--overwrite', action='store_true', help='replace OUT and its reports if they exist')
    args = p.parse_args(argv)
    for name in ('calibration_images', 'threads'):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.check_images < 0:
        p.error('--check-images must be >= 0')
    return args


def outputs(out: Path) -> dict:
    """The files a run writes: the model and its two reports beside it."""
    stem = out.with_suffix('')
    return dict(int8=out, json=stem.with_name(stem.name + '.report.json'), md=stem.with_name(stem.name + '.report.md'))


SUFFIX = {'onnxruntime': '.onnx', 'pt2e': '.pt2'}


def check_writable(out: Path, overwrite: bool, backend: str = 'onnxruntime') -> None:
    """UsageError, before any work, if ``out`` is no .onnx file name (.pt2 for ``backend`` pt2e), or it or a
    report exists (without ``overwrite``), or its folder cannot be written."""
    suffix = SUFFIX[backend]
    if out.suffix != suffix:
        raise UsageError(f'--out {out}: the int8 model of --backend {backend} needs a file name ending in {suffix}')
    files = outputs(out)
    for path in files.values():
        if path.is_dir():
            raise UsageError(f'{path} is a folder: give the int8 model a file name ending in {suffix}')
        if path.exists() and not overwrite:
            raise UsageError(f'{path} exists: pass --overwrite to replace it, or choose another --out')
    parent = files['int8'].parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f'cannot write {files["int8"]}: {parent} is not a writable folder')


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.out:
            check_writable(args.out, args.overwrite, args.backend)
        calibration_folder = list_image_folder(args.calibration_dir)
        held_out = list_image_folder(args.eval_dir) if args.eval_dir else None
        if held_out is not None:
            check_disjoint(calibration_folder, held_out)
        split = split_calibration(calibration_folder, args.calibration_images, args.check_images, args.seed)
        clf = load_classifier(args, use_ema=args.use_ema)
        out = args.out or Path('exports') / f"{args.model}{'_features' * args.headless}_int8{SUFFIX[args.backend]}"
        check_writable(out, args.overwrite, args.backend)
    except UsageError as e:
        fail(e)
    files = outputs(out)

    size = clf.data_cfg['input_size']
    print(f'{args.model} ({clf.weights}), {"dense maps" if args.headless else f"{len(clf.names)} classes"}, '
          f'input {size[1]}x{size[2]}; calibrating on {len(split.calibration)} images of {args.calibration_dir}, '
          f'checking on {len(split.check)} others', flush=True)
    metadata = serving_metadata(args.model, clf.weights, output_names(clf.model, args.headless), clf.data_cfg,
                                None if args.headless else clf.names)
    build = build_int8(clf.model, clf.data_cfg, split, args.keep_fp32, args.headless, args.min_agreement,
                       args.min_cosine, Recipe(moving_average=args.moving_average), args.threads,
                       log=lambda line: print(line, flush=True), backend=args.backend, metadata=metadata)
    if args.keep_fp32 == AUTO and split.check and not build.met_target:
        report('int8 misses the target on the check slice even with the whole stem in fp32 (see above); nothing '
               'written: lower --min-agreement/--min-cosine or choose --keep-fp32 to write it anyway')
        return 1

    evaluation = None
    if held_out is not None:
        labels, how = (None, 'dense maps: labels not used') if args.headless else held_out_labels(held_out, clf.names)
        result = evaluate(build, held_out.paths, clf.data_cfg, labels)
        evaluation = dict(folder=str(args.eval_dir), labels=how, result=result)

    cfg = {k: clf.data_cfg[k] for k in PREPROCESSING_KEYS}
    summary = dict(
        command=' '.join(['python', 'tools/quantize.py', *(argv if argv is not None else sys.argv[1:])]),
        model=dict(arch=args.model, weights=clf.weights, classes=len(clf.names), class_names_from=clf.names_from,
                   outputs=', '.join(build.outputs)),
        dense=args.headless,
        files=dict(int8=str(files['int8']), int8_mib=len(build.int8_bytes) / 2 ** 20,
                   fp32_mib=build.fp32_bytes / 2 ** 20),
        calibration=dict(folder=str(args.calibration_dir), folder_images=split.folder_images, seed=args.seed,
                         images=[str(p) for p in split.calibration], check_images=len(split.check),
                         preprocessing=f"timm's evaluation transform of the model's data config {cfg}"),
        build=build_summary(build, args.keep_fp32, args.min_agreement, args.min_cosine),
        evaluation=evaluation, versions=_versions(args.backend))
    with atomic_write(files['int8']) as f:
        f.write(build.int8_bytes)
    with atomic_write(files['json'], 'w') as f:
        json.dump(summary, f, indent=1)
    with atomic_write(files['md'], 'w') as f:
        f.write(report_markdown(summary))
    print(f"kept in fp32: {summary['build']['keep_fp32']} ({summary['build']['why']})")
    if evaluation:
        print(f"held-out evaluation on {args.eval_dir} ({evaluation['labels']}):\n{fidelity_table(evaluation['result'])}")
    print(f"wrote {files['int8']} ({summary['files']['int8_mib']:.2f} MiB; fp32 {summary['files']['fp32_mib']:.2f} "
          f"MiB), {files['json'].name}, {files['md'].name}")
    return 0


def _versions(backend: str) -> dict:
    import torch
    if backend == 'pt2e':
        import torchao
        return dict(torch=torch.__version__, torchao=torchao.__version__)
    import onnx
    import onnxruntime
    return dict(onnxruntime=onnxruntime.__version__, onnx=onnx.__version__, torch=torch.__version__)


if __name__ == '__main__':
    exit_process(main())
