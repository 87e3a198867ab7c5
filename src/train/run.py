"""``main(argv)`` of classification.py: train (or ``--evaluate``) a timm model, single process or DDP."""
from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..malloc import keep_freed_memory
from ..weights import CheckpointError
from . import data as D
from .config import UsageError, check_model_name, parse_args
from .engine import Position, UnreadableLog, autocast_for, evaluate, train_one_epoch
from .outputs import default_experiment, plot_summary, setup_logging, write_args, write_summary
from .state import (FORMAT, CheckpointFiles, find_resume_checkpoint, load_training_state, load_weights,
                    rng_state, set_rng_state, state_dict_of)

__all__ = ['main']

_log = logging.getLogger('train')


def _init_distributed(device_arg: Optional[str]):
    """(device, rank, world_size); under torchrun the process group is gloo on CPU, nccl on CUDA."""
    use_cuda = torch.cuda.is_available() if device_arg is None else device_arg.startswith('cuda')
    world = int(os.environ.get('WORLD_SIZE', 1))
    rank, local_rank = int(os.environ.get('RANK', 0)), int(os.environ.get('LOCAL_RANK', 0))
    if use_cuda:
        device = torch.device(f'cuda:{local_rank}' if world > 1 else (device_arg or 'cuda'))
        torch.cuda.set_device(device)
    else:
        device = torch.device('cpu')
        try:
            keep_freed_memory()  # no page faults for every step's activations (src/malloc.py)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if use_cuda else 'gloo')
    return device, rank, world


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_model(args, num_classes: int):
    kwargs = dict(num_classes=num_classes)
    if args.drop:
        kwargs['drop_rate'] = args.drop
    if args.drop_path is not None:
        kwargs['drop_path_rate'] = args.drop_path
    model = _create_model(args, pretrained=args.pretrained, **kwargs)
    if args.initial_checkpoint:
        load_weights(model, args.initial_checkpoint)
    return model


def _transforms(args, model):
    from timm.data import create_transform, resolve_data_config
    cfg = resolve_data_config(vars(args), model=model)
    train_tf = create_transform(
        cfg['input_size'], is_training=True, no_aug=args.no_aug, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=args.train_interpolation, mean=cfg['mean'], std=cfg['std'], re_prob=args.reprob,
        re_mode=args.remode, re_count=args.recount)
    eval_tf = create_transform(cfg['input_size'], is_training=False, interpolation=cfg['interpolation'],
                               mean=cfg['mean'], std=cfg['std'], crop_pct=cfg['crop_pct'])
    return cfg, train_tf, eval_tf


def _check_classes(args, found: Optional[int]) -> int:
    if found is None:
        if args.num_classes is None:
            raise UsageError('cannot tell how many classes the dataset has: pass --num-classes')
        return args.num_classes
    if args.num_classes is not None and args.num_classes != found:
        raise UsageError(f'the dataset has {found} classes but --num-classes is {args.num_classes}: set '
                         f'--num-classes {found} (a pretrained head of another size is re-initialised)')
    return found


def _resolve_run_dir(args, world: int) -> Path:
    if not args.experiment:
        if args.resume == 'auto':
            raise UsageError('--resume auto needs --experiment NAME (the run folder to continue)')
        name = default_experiment(args.model, args.img_size or 224)
        if world > 1:  # every process must agree on the folder
            box = [name]
            dist.broadcast_object_list(box, src=0)
            name = box[0]
        args.experiment = name
    return Path(args.output) / args.experiment


def _guard_run_dir(run_dir: Path, args) -> None:
    """Never start over in a run folder that holds checkpoints unless told to."""
    existing = sorted(p.name for p in run_dir.glob('*.pth.tar')) if run_dir.is_dir() else []
    if existing and not args.resume and not args.overwrite:
        raise UsageError(f'{run_dir} already holds checkpoints ({", ".join(existing[:3])}): pass --resume auto '
                         f'to continue that run, --overwrite to start it again, or another --experiment')


def _evaluate_only(args, device, rank, world) -> int:
    import timm
    source = args.resume or args.initial_checkpoint
    if not (source or args.pretrained) or source == 'auto':
        raise UsageError('--evaluate needs weights: --resume CKPT, --initial-checkpoint CKPT or --pretrained')
    check_model_name(args.model)
    _, _, eval_tf = _transforms(args, _build_model_probe(args))
    val = D.build_dataset(args.dataset, args.data_dir, args.val_split, eval_tf, args.download)
    num_classes = _check_classes(args, D.dataset_classes(val))
    model = timm.create_model(args.model, pretrained=args.pretrained and not source, num_classes=num_classes)
    if source:
        load_weights(model, source, use_ema=args.use_ema)
    model.to(device)
    sampler = D.EpochSampler(len(val), shuffle=False, rank=rank, num_replicas=world, pad=False)
    loader = D.build_loader(val, sampler, args.validation_batch_size or args.batch_size, args.workers, False, args.seed)
    m = evaluate(model, loader, device=device, autocast=autocast_for(device, args.amp, args.amp_dtype),
                 unreadable=UnreadableLog(args.strict_images))
    if rank == 0:
        print(f"evaluate {args.model} ({source or 'pretrained'}) on {m['n']} images: top-1 {m['top1']:.3f} "
              f"top-5 {m['top5']:.3f} loss {m['eval_loss']:.4f}", flush=True)
    return 0


def train(args, device, rank, world) -> int:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, NativeScaler

    is_main = rank == 0
    check_model_name(args.model)  # every input check first: bad input leaves no trace on disk
    cfg, train_tf, eval_tf = _transforms(args, _build_model_probe(args))
    train_set = D.build_dataset(args.dataset, args.data_dir, args.train_split, train_tf, args.download, True)
    val_set = D.build_dataset(args.dataset, args.data_dir, args.val_split, eval_tf, args.download)
    num_classes = _check_classes(args, D.dataset_classes(train_set))
    run_dir = _resolve_run_dir(args, world)
    _guard_run_dir(run_dir, args)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.barrier()
    setup_logging(run_dir / 'train.log', is_main)
    resume = None
    if args.resume == 'auto':
        resume = find_resume_checkpoint(run_dir)
    elif args.resume:
        resume = load_training_state(args.resume)
    if resume is not None:
        _log.info(f"resuming from {resume.get('path', args.resume)}: {resume['position']['epoch']} epochs "
                  f"and {resume['position']['step']} steps done")
    elif args.resume == 'auto':
        _log.info(f'--resume auto: no checkpoint in {run_dir}, starting a new run')
    elif args.overwrite and is_main:  # asked to start again: no stale checkpoint may survive
        for old in run_dir.glob('*.pth.tar'):
            old.unlink()

    _seed_everything(args.seed + rank)
    model = _build_model(args, num_classes).to(device)
    ema = ModelEmaV3(model, decay=args.model_ema_decay, device=device) if args.model_ema else None
    opt_kwargs = {'eps': args.opt_eps} if args.opt_eps else {}
    if args.opt.lower() in ('adam', 'adamw'):
        opt_kwargs['fused'] = True  # one kernel per step instead of a loop over parameters (CPU and CUDA)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, **opt_kwargs)
    scaler = NativeScaler(device=device.type) if args.amp and device.type == 'cuda' and \
        (args.amp_dtype or 'float16') == 'float16' else None
    autocast = autocast_for(device, args.amp, args.amp_dtype)

    batch = args.batch_size
    train_sampler = D.EpochSampler(len(train_set), seed=args.seed, rank=rank, num_replicas=world)
    steps = len(train_sampler) // batch
    if steps == 0:
        raise UsageError(f'{len(train_set)} training images give no full batch of {batch} per process: '
                         f'lower --batch-size')
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs,
        cooldown_epochs=args.cooldown_epochs, updates_per_epoch=steps)
    mixup_on = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                  prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                  label_smoothing=args.smoothing, num_classes=num_classes) if mixup_on else None
    if mixup_on:
        loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()

    pos, history, best = Position(), [], None
    if resume is not None:
        model.load_state_dict(resume['state_dict'])
        if ema is not None and resume.get('state_dict_ema') is not None:
            ema.module.load_state_dict(resume['state_dict_ema'])
        optimizer.load_state_dict(resume['optimizer'])
        scheduler.load_state_dict(resume['scheduler'])
        if scaler is not None and resume.get('scaler') is not None:
            scaler.load_state_dict(resume['scaler'])
        pos = Position(**resume['position'])
        history, best = list(resume['history']), resume.get('best')
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)

    files = CheckpointFiles(run_dir, keep=args.keep_checkpoints)
    names = getattr(train_set, 'classes', None)  # an ImageFolder's class folders, in index order
    class_names = [str(c) for c in names] if names and len(names) == num_classes else None
    args_dict = {k: v for k, v in vars(args).items()}

    def snapshot() -> dict:
        rngs = [rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state())
        return dict(format=FORMAT, arch=args.model, num_classes=num_classes, classes=class_names,
                    state_dict=state_dict_of(model),
                    state_dict_ema=state_dict_of(ema.module) if ema is not None else None,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None, position=pos.state_dict(),
                    rng=rngs, world_size=world, history=history, best=best, args=args_dict)

    def on_step(p: Position) -> None:
        if args.checkpoint_interval and p.step % args.checkpoint_interval == 0 and p.step < steps:
            state = snapshot()
            if is_main:
                files.save_recovery(state)

    if is_main:
        write_args(args_dict, run_dir / 'args.yaml')
        if history:
            write_summary(history, run_dir / 'summary.csv')
        n_params = sum(p.numel() for p in model.parameters())
        _log.info(f'{args.model}: {n_params / 1e6:.2f}M params, {num_classes} classes, input {cfg["input_size"]}; '
                  f'{len(train_set)} train / {len(val_set)} val images; {world} process(es) on {device}, '
                  f'{steps} steps/epoch, {num_epochs} epochs; outputs in {run_dir}')

    val_sampler = D.EpochSampler(len(val_set), shuffle=False, rank=rank, num_replicas=world, pad=False)
    val_loader = D.build_loader(val_set, val_sampler, args.validation_batch_size or batch, args.workers,
                                False, args.seed)
    seeded_train = D.SeededSamples(train_set, args.seed)
    unreadable = UnreadableLog(args.strict_images)
    if resume is not None:  # last: everything built above may have drawn random numbers
        rngs = resume['rng']
        if len(rngs) != world:
            _log.warning(f'resuming with {world} processes, the checkpoint had {len(rngs)}: the data order '
                         f'and random draws differ from an uninterrupted run')
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])

    for epoch in range(pos.epoch, num_epochs):
        seeded_train.epoch = epoch
        train_sampler.set_epoch(epoch, skip=pos.step * batch)
        loader = D.build_loader(seeded_train, train_sampler, batch, args.workers, True, args.seed + epoch)
        train_loss = train_one_epoch(
            train_model, loader, optimizer, loss_fn, pos, steps, device=device, autocast=autocast,
            scheduler=scheduler, mixup=mixup, ema=ema, scaler=scaler, clip_grad=args.clip_grad,
            unreadable=unreadable, log_interval=args.log_interval, on_step=on_step, num_epochs=num_epochs)
        lr = optimizer.param_groups[0]['lr']
        metrics = evaluate(model, val_loader, device=device, autocast=autocast, unreadable=unreadable)
        row = dict(epoch=epoch + 1, train_loss=round(train_loss, 6), eval_loss=round(metrics['eval_loss'], 6),
                   top1=round(metrics['top1'], 4), top5=round(metrics['top5'], 4), lr=lr)
        if ema is not None:
            m = evaluate(ema.module, val_loader, device=device, autocast=autocast, unreadable=unreadable)
            row.update(ema_eval_loss=round(m['eval_loss'], 6), ema_top1=round(m['top1'], 4), ema_top5=round(m['top5'], 4))
        history.append(row)
        is_best = best is None or row['top1'] > best['top1']
        if is_best:
            best = dict(epoch=epoch + 1, top1=row['top1'])
        scheduler.step(epoch + 1, metrics['top1'])
        pos = Position(epoch=epoch + 1, num_updates=pos.num_updates)
        state = snapshot()
        if is_main:
            files.save_epoch(state, epoch + 1, is_best)
            write_summary(history, run_dir / 'summary.csv')
            plot_summary(history, run_dir / 'summary.png')
            _log.info(f"epoch {epoch + 1}/{num_epochs}: train loss {train_loss:.4f}, eval loss "
                      f"{metrics['eval_loss']:.4f}, top-1 {metrics['top1']:.3f}, top-5 {metrics['top5']:.3f}"
                      + (f", unreadable images skipped {len(unreadable.seen)}" if unreadable.seen else ''))
    if is_main and history:
        last = history[-1]
        _log.info(f"done: top-1 {last['top1']:.3f} on the {len(val_set)} held-out images (best {best['top1']:.3f} "
                  f"at epoch {best['epoch']}); outputs in {run_dir}")
    return 0


def _create_model(args, **kwargs):
    """``timm.create_model(args.model, **kwargs)`` with ``--model-kwargs`` (a config's ``model_kwargs``) on
    top; a keyword the model does not take, or a value it refuses, is a UsageError."""
    import timm
    extra = args.model_kwargs or {}
    if not isinstance(extra, dict):
        raise UsageError(f'model_kwargs must be a mapping of argument: value, got {extra!r}')
    try:
        return timm.create_model(args.model, **{**kwargs, **extra})
    except (TypeError, ValueError) as e:
        raise UsageError(f'model {args.model} with model_kwargs {extra}: {e}') from None


def _build_model_probe(args):
    """A model only to read its pretrained config (input size, mean/std); cheap: no weights loaded."""
    return _create_model(args, pretrained=False, num_classes=args.num_classes or 1000)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args, _ = parse_args(argv)
        device, rank, world = _init_distributed(args.device)
        try:
            return (_evaluate_only if args.evaluate else train)(args, device, rank, world)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    except (UsageError, CheckpointError) as e:
        print(f'classification.py: error: {e}', file=sys.stderr, flush=True)
        return 2
