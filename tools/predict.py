"""Top-5 classes of images, with names, for a ConvMLP classifier.

    python tools/predict.py IMAGE... --model convmlp_s                     # the release's ImageNet weights
    python tools/predict.py IMAGE... --checkpoint output/train/RUN/best.pth.tar   # a classification.py run
    python tools/predict.py IMAGE... --model convmlp_s --random            # random weights (no download)
    python tools/predict.py IMAGE... --onnx exports/digits_int8.onnx       # of tools/quantize.py or export.py

Class names: a run's class folders (stored in its checkpoint, else read from the training split its
arguments name), ImageNet-1k's from timm for 1000-class weights, else indices. The class count comes
from the checkpoint. Preprocessing is timm's evaluation transform of the model (a run's --img-size,
--crop-pct, --mean/--std when it set them). With --onnx the file runs in ONNX Runtime, its class names and
preprocessing read from the file (src/deploy/metadata.py). Bad input: one ``predict.py: error:`` line, exit
code 2.
"""
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.deploy.export import onnx_classifier  # noqa: E402
from src.model_options import add_model_args, load_classifier, preprocess  # noqa: E402
from src.utils.errors import OneLineParser, UsageError, fail  # noqa: E402
from src.utils.images import read_images  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402


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
    p.add_argument('--onnx', type=Path, metavar='FILE',
                   help='run an ONNX classifier of tools/quantize.py or tools/export.py instead (class names and '
                        'preprocessing from the file)')
    p.set_defaults(model=None)  # None: the run's architecture (from its checkpoint), else convmlp_s
    args = p.parse_args(argv)
    if args.onnx and (args.model or args.checkpoint or args.random or args.use_ema):
        p.error('--onnx runs the file as it is: drop --model/--checkpoint/--random/--use-ema')
    try:
        images = read_images(args.images)
        if args.onnx and not args.onnx.is_file():
            raise UsageError(f'--onnx {args.onnx}: no such file')
    except UsageError as e:
        fail(e)
    if args.onnx:
        try:
            clf = onnx_classifier(args.onnx)
        except ValueError as e:
            fail(e)
    else:
        clf = load_classifier(args, use_ema=args.use_ema)
    size = clf.data_cfg['input_size']
    print(f'{args.model or "ONNX"}, weights: {clf.weights}; {len(clf.names)} classes, names from {clf.names_from}; '
          f'input {size[1]}x{size[2]}')
    for path, best in zip(args.images, top5(clf.model, images, clf.data_cfg)):
        print(path)
        for rank, (index, prob) in enumerate(best, 1):
            print(f'  {rank}. {100 * prob:5.1f}%  {clf.names[index]} ({index})')
    return 0


if __name__ == '__main__':
    exit_process(main())
