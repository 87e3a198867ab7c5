"""Top-5 classes of images, with names, for a ConvMLP classifier.

    python tools/predict.py IMAGE... --model convmlp_s                     # the release's ImageNet weights
    python tools/predict.py IMAGE... --checkpoint output/train/RUN/best.pth.tar   # a classification.py run
    python tools/predict.py IMAGE... --model convmlp_s --random            # random weights (no download)
    python tools/predict.py IMAGE... --onnx exports/digits_int8.onnx       # of tools/quantize.py or export.py
    python tools/predict.py IMAGE... --pt2 exports/digits_int8.pt2         # of quantize.py --backend pt2e or export.py
    python tools/predict.py IMAGE... --torchscript exports/convmlp_s.ts.pt # of tools/export.py

Class names: a run's class folders (stored in its checkpoint, else read from the training split its
arguments name), ImageNet-1k's from timm for 1000-class weights, else indices. The class count comes
from the checkpoint. Preprocessing is timm's evaluation transform of the model (a run's --img-size,
--crop-pct, --mean/--std when it set them). A deployed file (--onnx: in ONNX Runtime; --pt2: a torch.export
program, int8 or fp32, as it is or with --compile as a service runs it; --torchscript) runs with the class names and
preprocessing stored in it (src/deploy/metadata.py). Bad input: one ``predict.py: error:`` line, exit code 2.
"""
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.deploy.export import onnx_classifier, torchscript_classifier  # noqa: E402
from src.model_options import add_model_args, load_classifier, preprocess  # noqa: E402
from src.utils.errors import OneLineParser, UsageError, fail  # noqa: E402
from src.utils.images import read_images  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402


# the options that run a deployed file: what the first line of the output calls each, the file name's ending
DEPLOYED = {'onnx': ('ONNX', '.onnx'), 'pt2': ('PT2', '.pt2'), 'torchscript': ('TorchScript', '.pt')}


def deployed_classifier(kind: str, path: Path, compiled: bool, max_autotune: bool = False):
    """The classifier of a deployed file (``kind`` a key of :data:`DEPLOYED`), by the metadata stored in it."""
    if kind == 'onnx':
        return onnx_classifier(path)
    if kind == 'torchscript':
        return torchscript_classifier(path)
    from src.deploy.pt2e import pt2_classifier  # imports torchao (an int8 program's ops): only for --pt2
    return pt2_classifier(path, compiled, max_autotune)


def top5(model, images: Sequence[np.ndarray], data_cfg: dict) -> List[List[Tuple[int, float]]]:
    """Top-5 (class index, probability) of each RGB image, preprocessed as timm's eval transform of
    ``data_cfg`` (input size, crop_pct, interpolation, mean/std)."""
    with torch.no_grad():
        prob = model(preprocess(images, data_cfg)).softmax(-1)
    values, indices = prob.topk(min(5, prob.shape[1]), dim=1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]


def main(argv=None) -> int:
    p = OneLineParser(description=__doc__.split('\n\n')[0])
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    add_model_args(p)
    p.add_argument('--use-ema', action='store_true', help="a run's EMA weights (needs a run with --model-ema)")
    deployed = p.add_mutually_exclusive_group()
    deployed.add_argument('--onnx', type=Path, metavar='FILE',
                          help='run an ONNX classifier of tools/quantize.py or tools/export.py instead (class names '
                               'and preprocessing from the file)')
    deployed.add_argument('--pt2', type=Path, metavar='FILE',
                          help='run a .pt2 classifier of tools/quantize.py --backend pt2e (int8) or tools/export.py '
                               '--format pt2 instead (as --onnx)')
    deployed.add_argument('--torchscript', type=Path, metavar='FILE',
                          help='run a .ts.pt classifier of tools/export.py instead (as --onnx)')
    p.add_argument('--compile', action='store_true',
                   help='with --pt2: compile the program by inductor first (an int8 one into oneDNN int8 kernels), '
                        'as a service runs it (tens of seconds); without, an int8 one is emulated in fp32 ops')
    p.add_argument('--max-autotune', action='store_true',
                   help="with --compile: also time inductor's C++ int8 GEMMs against oneDNN's for each quantized "
                        'linear and keep the faster (AVX512-VNNI and AMX CPUs; minutes the first time)')
    p.set_defaults(model=None)  # None: the run's architecture (from its checkpoint), else convmlp_s
    args = p.parse_args(argv)
    kind, path = next(((kind, getattr(args, kind)) for kind in DEPLOYED if getattr(args, kind)), (None, None))
    if path and (args.model or args.checkpoint or args.random or args.use_ema):
        p.error(f'--{kind} runs the file as it is: drop --model/--checkpoint/--random/--use-ema')
    if args.compile and kind != 'pt2':
        p.error('--compile compiles a --pt2 program: give --pt2 FILE, or drop --compile')
    if args.max_autotune and not args.compile:
        p.error('--max-autotune is a setting of --compile: add --compile, or drop --max-autotune')
    try:
        images = read_images(args.images)
        if path and not path.is_file():
            raise UsageError(f'--{kind} {path}: no such file')
        if path and not path.name.endswith(DEPLOYED[kind][1]):
            raise UsageError(f'--{kind} {path}: expects a {DEPLOYED[kind][1]} file')
    except UsageError as e:
        fail(e)
    if path:
        try:
            clf = deployed_classifier(kind, path, args.compile, args.max_autotune)
        except ValueError as e:
            fail(e)
    else:
        clf = load_classifier(args, use_ema=args.use_ema)
    size = clf.data_cfg['input_size']
    print(f'{DEPLOYED[kind][0] if kind else args.model}, weights: {clf.weights}; {len(clf.names)} classes, names from '
          f'{clf.names_from}; input {size[1]}x{size[2]}')
    for image, best in zip(args.images, top5(clf.model, images, clf.data_cfg)):
        print(image)
        for rank, (index, prob) in enumerate(best, 1):
            print(f'  {rank}. {100 * prob:5.1f}%  {clf.names[index]} ({index})')
    return 0


if __name__ == '__main__':
    exit_process(main())
