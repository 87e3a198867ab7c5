"""Top-5 classes of images, with names, for a ConvMLP classifier.

    python tools/predict.py IMAGE... --model convmlp_s                     # the release's ImageNet weights
    python tools/predict.py IMAGE... --checkpoint output/train/RUN/best.pth.tar   # a classification.py run
    python tools/predict.py IMAGE... --model convmlp_s --random            # random weights (no download)

Class names: a run's class folders (stored in its checkpoint, else read from the training split its
arguments name), ImageNet-1k's from timm for 1000-class weights, else indices. The class count comes
from the checkpoint. Preprocessing is timm's evaluation transform of the model (a run's --img-size,
--crop-pct, --mean/--std when it set them). Bad input: one ``predict.py: error:`` line, exit code 2.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.cli import add_model_args, build_model, fail  # noqa: E402


def _checkpoint_state(source: str):
    """The checkpoint dict of a local file (its run arguments and class names), or None for other sources."""
    from src.weights import CheckpointError, load_checkpoint_file
    if not Path(source).is_file():
        return None
    try:
        return load_checkpoint_file(source)
    except CheckpointError as e:
        fail(str(e))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files')
    add_model_args(p)
    p.add_argument('--use-ema', action='store_true', help="a run's EMA weights (needs a run with --model-ema)")
    p.set_defaults(model=None)  # None: the run's architecture (from its checkpoint), else convmlp_s
    args = p.parse_args(argv)

    from src.convmlp import ABLATION_MODELS, ARCHS
    from src.inference import InputError, check_images, class_names, top5
    from src.weights import CheckpointError, load_pretrained, unwrap_state_dict
    try:
        images = check_images(args.images)
    except InputError as e:
        fail(str(e))
    state = _checkpoint_state(args.checkpoint) if args.checkpoint else None
    run_args = state.get('args') if isinstance(state, dict) and isinstance(state.get('args'), dict) else {}
    num_classes = 1000
    if state is not None:
        try:
            sd = unwrap_state_dict(state, use_ema=args.use_ema)
        except CheckpointError as e:
            fail(f'{args.checkpoint}: {e}')
        if args.use_ema and state.get('state_dict_ema') is None:
            fail(f'{args.checkpoint} holds no EMA weights: drop --use-ema')
        if 'head.weight' not in sd:
            fail(f'{args.checkpoint} has no classifier head (a backbone or detector file?): give a '
                 f'classification checkpoint')
        num_classes = sd['head.weight'].shape[0]
    args.model = args.model or run_args.get('model') or 'convmlp_s'
    if args.model not in {*ARCHS, *ABLATION_MODELS}:
        fail(f'{args.checkpoint} is a run of {args.model}, not a ConvMLP: pass --model convmlp_s/m/l if it is one')
    weights = argparse.Namespace(**vars(args))
    if args.use_ema:  # build_model loads the plain weights: load the EMA ones here
        weights.checkpoint, weights.random = None, True
    try:
        model, what = build_model(weights, num_classes=num_classes, need_head=True)
        if args.use_ema:
            load_pretrained(model, args.checkpoint, use_ema=True)
            what = f'{args.checkpoint} (EMA)'
    except CheckpointError as e:
        fail(str(e))
    names, origin = class_names(state, num_classes, args.checkpoint or args.model)

    from timm.data import resolve_data_config
    overrides = {k: run_args[k] for k in ('img_size', 'crop_pct', 'mean', 'std', 'interpolation')
                 if run_args.get(k) not in (None, '')}
    if 'img_size' in overrides:
        overrides['input_size'] = (3, overrides.pop('img_size'), run_args['img_size'])
    data_cfg = resolve_data_config(overrides, model=model)
    print(f'{args.model}, weights: {what}; {num_classes} classes, names from {origin}; input '
          f'{data_cfg["input_size"][1]}x{data_cfg["input_size"][2]}')
    for path, best in zip(args.images, top5(model, images, data_cfg)):
        print(path)
        for rank, (index, prob) in enumerate(best, 1):
            print(f'  {rank}. {100 * prob:5.1f}%  {names[index]} ({index})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
