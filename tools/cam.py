"""Class activation maps of a ConvMLP classifier: where it looks for the class it predicts (or one you name),
one overlay PNG per image.

    python tools/cam.py cat.jpg --model convmlp_s                        # the release's ImageNet weights
    python tools/cam.py photos/ --checkpoint output/train/RUN/best.pth.tar --out cams/
    python tools/cam.py crops/ --checkpoint RUN/best.pth.tar --method layercam --layer stage1 --class square
    python tools/cam.py cat.jpg --checkpoint convmlp_s_cifar10 --class 3 --method gradcam++

Inputs: image files, or folders (searched recursively for .jpg/.jpeg/.png/.bmp/.gif/.tif/.tiff/.webp files;
each picture goes to the same relative path under --out, as .png). Each picture shows the image as the model
saw it (timm's eval transform of the model: a run's --img-size and --crop-pct), the map over it (jet; red =
where the class score depends most on the map), and the class explained with its name and probability, the
method and the layer.

Methods (--method): gradcam (default), gradcam++, xgradcam, hirescam, gradcamelementwise, layercam,
eigencam (class-agnostic: --class has no effect), eigengradcam; pytorch-grad-cam computes them, smoothed on
request as the library smooths (--eigen-smooth, --aug-smooth).
Layers (--layer): tokenizer (stride 4), conv_block (4: the conv stage's last block), conv_stage (8), stage1
(8), stage2 (16), stage3 (32, the default: the last stage), norm (the final LayerNorm, 32); module names like
stages.1.blocks.0 too. A map coarser than 4x4 (the last stage of a 64 px input is 2x2) gets a warning naming
the layers that are finer at that size.
Bad input (missing file, not an image, empty folder, unknown layer, method or class): one ``cam.py: error:``
line, exit code 2.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.explain.cam import METHODS, MIN_MAP_SIDE  # noqa: E402
from src.model_options import add_model_args, eval_transform, load_classifier  # noqa: E402
from src.utils.errors import UsageError, fail  # noqa: E402
from src.utils.images import IMAGE_SUFFIXES, image_files, read_images, save_png  # noqa: E402
from src.utils.shutdown import exit_process  # noqa: E402


def collect_inputs(inputs: Sequence[str], out: Path) -> List[Tuple[Path, Path]]:
    """(image file, its picture under ``out``) for each input: a file -> ``out/STEM.png``; a folder -> each
    image in it (sorted, recursive) -> ``out/RELATIVE/PATH.png``. UsageError for a missing path, a named file
    that is not an image, a folder without images, two inputs writing one picture, or ``out`` inside an input
    folder (its pictures would be read as inputs on the next run)."""
    from PIL import Image, UnidentifiedImageError
    pairs = []
    for item in map(Path, inputs):
        if item.is_dir():
            if out.resolve() == item.resolve() or item.resolve() in out.resolve().parents:
                raise UsageError(f'--out {out} is inside the input folder {item}: choose an --out outside it')
            files = image_files(item)
            if not files:
                raise UsageError(f'no image files ({", ".join(sorted(IMAGE_SUFFIXES))}) in folder {item}')
            pairs += [(f, out / f.relative_to(item).with_suffix('.png')) for f in files]
        elif item.is_file():
            try:
                with Image.open(item):
                    pass
            except (OSError, UnidentifiedImageError, ValueError) as e:
                raise UsageError(f'cannot read image {item} ({type(e).__name__}): give a JPEG/PNG file or a folder') from None
            pairs.append((item, out / f'{item.stem}.png'))
        else:
            raise UsageError(f'image or folder not found: {item}')
    seen = {}
    for source, picture in pairs:
        if picture in seen:
            raise UsageError(f'{seen[picture]} and {source} would both be drawn to {picture}: give them in separate runs')
        seen[picture] = source
    return pairs


def eval_views(data_cfg: dict):
    """(geometry, to_tensor): timm's eval transform of ``data_cfg`` (:func:`src.model_options.eval_transform`)
    split into the part that resizes and crops (PIL in, PIL out: the image as the model sees it) and the part
    that makes the normalised tensor."""
    tf = eval_transform(data_cfg)
    cut = next(i for i, t in enumerate(tf.transforms) if 'ToTensor' in type(t).__name__)
    geometry, tensor = tf.transforms[:cut], tf.transforms[cut:]

    def apply(steps, value):
        for step in steps:
            value = step(value)
        return value
    return (lambda img: apply(geometry, img)), (lambda img: apply(tensor, img))


def picture(image: np.ndarray, cam: np.ndarray, title: str, alpha: float) -> np.ndarray:
    """(H, W, 3) uint8 image and (H, W) map -> RGB uint8 picture: the image, the map over it, a colour
    bar, ``title`` above. Panels at least 192 px (small inputs enlarged, nearest)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from src.explain.cam import overlay
    h, w = cam.shape
    scale = max(1, -(-192 // max(h, w)))
    image, cam = image.repeat(scale, 0).repeat(scale, 1), cam.repeat(scale, 0).repeat(scale, 1)
    dpi, title_px, bar_px, gap = 100, 16 * (title.count('\n') + 1) + 8, 60, 6
    width, height = 2 * image.shape[1] + gap + bar_px, image.shape[0] + title_px
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    for col, panel in enumerate((image, overlay(image, cam, alpha))):
        ax = fig.add_axes([col * (image.shape[1] + gap) / width, 0, image.shape[1] / width, image.shape[0] / height])
        ax.imshow(panel, interpolation='nearest')
        ax.set_axis_off()
    bar = fig.add_axes([(2 * image.shape[1] + gap + 8) / width, 0.1 * image.shape[0] / height, 10 / width,
                        0.8 * image.shape[0] / height])
    import matplotlib
    fig.colorbar(matplotlib.cm.ScalarMappable(cmap='jet', norm=matplotlib.colors.Normalize(0, 1)), cax=bar)
    bar.tick_params(labelsize=7)
    fig.text(4 / width, 1 - 4 / height, title, fontsize=8, va='top', ha='left')
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def coarse_map_warning(model, layer: str, map_size, input_hw) -> Optional[str]:
    """A warning when ``layer``'s map is smaller than MIN_MAP_SIDE on a side, naming the finer layers."""
    if min(map_size) >= MIN_MAP_SIDE:
        return None
    from src.explain.cam import layer_map_sizes
    finer = [f'{name} ({h}x{w})' for name, (h, w) in layer_map_sizes(model, *input_hw).items() if min(h, w) >= MIN_MAP_SIDE]
    return (f'warning: layer {layer} gives a {map_size[0]}x{map_size[1]} map at {input_hw[0]}x{input_hw[1]} input: '
            f'its map is that coarse, upsampled; finer here: {", ".join(finer) or "none"}')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog='\n\n'.join(__doc__.split('\n\n')[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', nargs='+', metavar='IMAGE_OR_FOLDER', help='image files and/or folders of images')
    add_model_args(p)
    p.set_defaults(model=None)  # None: the run's architecture (from its checkpoint), else convmlp_s
    p.add_argument('--method', default='gradcam', type=str.lower, help=f'{", ".join(METHODS)} (default gradcam)')
    p.add_argument('--layer', default=None, help='tokenizer, conv_block, conv_stage, stage1, stage2, stage3 (default: '
                                                 'the last stage), norm, or a module name')
    p.add_argument('--eigen-smooth', action='store_true', help="the library's eigen_smooth: the map is the first "
                   "principal component of the method's weighted activations (less noise; its sign arbitrary)")
    p.add_argument('--aug-smooth', action='store_true', help="the library's aug_smooth: the mean map over six "
                   'test-time augmentations (flip x intensity; six times the passes)')
    p.add_argument('--class', dest='target', default=None, metavar='NAME_OR_INDEX',
                   help='explain this class in every image (default: each image\'s predicted class)')
    p.add_argument('--out', type=Path, default=Path('cams'), help='folder for the pictures (default cams/)')
    p.add_argument('--alpha', type=float, default=0.5, help='opacity of the map over the image (default 0.5)')
    p.add_argument('--batch-size', type=int, default=16, help='images per pass (default 16)')
    p.add_argument('--use-ema', action='store_true', help="a run's EMA weights (needs a run with --model-ema)")
    args = p.parse_args(argv)
    from src.explain.cam import class_activation_maps, resolve_class, resolve_layer, smoothing_names
    if args.method not in METHODS:
        fail(f'unknown --method {args.method!r}: choose one of {", ".join(METHODS)}')
    if not 0 <= args.alpha <= 1 or args.batch_size < 1:
        fail(f'--alpha must be in [0, 1] and --batch-size >= 1; got {args.alpha} and {args.batch_size}')
    try:
        pairs = collect_inputs(args.inputs, args.out)
    except UsageError as e:
        fail(e)
    clf = load_classifier(args, use_ema=args.use_ema)
    try:
        layer = resolve_layer(clf.model, args.layer).name
    except ValueError as e:
        fail(f'--layer: {e}')
    try:
        target = None if args.target is None else resolve_class(args.target, clf.names)
    except ValueError as e:
        fail(f'--class: {e}')
    if target is not None and args.method == 'eigencam':
        print('note: eigencam is class-agnostic: the map is the same for every class (--class only sets the title)',
              file=sys.stderr)
    smooth = ''.join(f' +{name}_smooth' for name in smoothing_names(args.eigen_smooth, args.aug_smooth))
    geometry, to_tensor = eval_views(clf.data_cfg)
    weights = clf.weights if len(clf.weights) <= 40 else '...' + clf.weights[-37:]
    from PIL import Image
    warned = False
    for start in range(0, len(pairs), args.batch_size):
        chunk = pairs[start:start + args.batch_size]
        try:
            views = [geometry(Image.fromarray(img)) for img in read_images([src for src, _ in chunk])]
        except UsageError as e:
            fail(e)
        batch = torch.stack([to_tensor(v) for v in views])
        result = class_activation_maps(clf.model, batch, args.method, layer, target, eigen_smooth=args.eigen_smooth,
                                       aug_smooth=args.aug_smooth)
        if not warned:
            warned = True
            message = coarse_map_warning(clf.model, layer, result.map_size, batch.shape[2:])
            if message:
                print(message, file=sys.stderr)
        for (source, out), view, cam, index, prob in zip(chunk, views, result.maps, result.classes, result.probs):
            kind = 'requested' if target is not None else 'predicted'
            title = (f'{source.name}: {kind} {clf.names[index]} ({index}), p = {prob:.2f}\n'
                     f'{args.method}{smooth} at {layer} ({result.map_size[0]}x{result.map_size[1]} map, '
                     f'{batch.shape[2]}x{batch.shape[3]} input); {args.model}, {weights}')
            save_png(picture(np.asarray(view), cam, title, args.alpha), out)
    print(f'wrote {len(pairs)} picture(s) to {args.out} ({args.method}{smooth} at {layer}; {args.model}, weights: '
          f'{clf.weights}; class names from {clf.names_from})')
    return 0


if __name__ == '__main__':
    exit_process(main())
