"""``main(argv)`` of classification.py: train (or ``--evaluate``) a timm model, single process or DDP.

A training run goes in steps, each its own function: the data and every input check
(:func:`prepare_data`: bad input leaves no trace on disk), the run folder and the checkpoint to resume from
(:func:`prepare_run_folder`), then a :class:`Training` that builds what the run holds (model, EMA,
optimizer, schedule, loss), restores a checkpoint into it, and trains epoch by epoch, saving after each.
"""
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..utils.distributed import Processes, setup_process, teardown_process
from ..utils.errors import UsageError, report
from ..utils.preemption import EXIT_PREEMPTED, Preemption
from ..utils.rng import rng_state, set_rng_state
from . import data as D
from .config import check_model_name, parse_args
from .engine import Position, UnreadableLog, autocast_for, evaluate, train_one_epoch
from .outputs import default_experiment, plot_summary, setup_logging, write_args, write_summary
from .state import (FORMAT, CheckpointFiles, find_resume_checkpoint, load_training_state, load_weights,
                    state_dict_of)

__all__ = ['main', 'Training', 'prepare_data', 'prepare_run_folder']

_log = logging.getLogger('train')


# ---- the model and its data ----------------------------------------------------------------------------
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


def _transforms(args):
    """(timm data config, train transform, eval transform) of the model, from a probe model (no weights)."""
    from timm.data import create_transform, resolve_data_config
    probe = _create_model(args, pretrained=False, num_classes=args.num_classes or 1000)
    cfg = resolve_data_config(vars(args), model=probe)
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


@dataclass
class Data:
    """The datasets of a training run and what follows from them."""
    train_set: object
    val_set: object
    num_classes: int
    data_cfg: dict
    class_names: Optional[List[str]]  # an ImageFolder's class folders, in index order


def prepare_data(args) -> Data:
    """Model name, datasets and class count checked: every input check before anything is written."""
    if args.grad_accum_steps < 1:
        raise UsageError(f'--grad-accum-steps must be at least 1 (1: no accumulation), got {args.grad_accum_steps}')
    check_model_name(args.model)
    cfg, train_tf, eval_tf = _transforms(args)
    train_set = D.build_dataset(args.dataset, args.data_dir, args.train_split, train_tf, args.download, True)
    val_set = D.build_dataset(args.dataset, args.data_dir, args.val_split, eval_tf, args.download)
    num_classes = _check_classes(args, D.dataset_classes(train_set))
    names = getattr(train_set, 'classes', None)
    class_names = [str(c) for c in names] if names and len(names) == num_classes else None
    return Data(train_set, val_set, num_classes, cfg, class_names)


# ---- the run folder -------------------------------------------------------------------------------------
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


def prepare_run_folder(args, procs: Processes) -> Tuple[Path, Optional[dict]]:
    """The run folder (created, logging into its train.log) and the checkpoint to resume from, if any.
    With ``--overwrite`` and nothing to resume, the folder's old checkpoints are deleted."""
    run_dir = _resolve_run_dir(args, procs.world_size)
    _guard_run_dir(run_dir, args)
    if procs.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if procs.world_size > 1:
        dist.barrier()
    setup_logging(run_dir / 'train.log', procs.is_main)
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
    elif args.overwrite and procs.is_main:  # asked to start again: no stale checkpoint may survive
        for old in run_dir.glob('*.pth.tar'):
            old.unlink()
    return run_dir, resume


# ---- training ---------------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Training:
    """One training run: what it holds (model, EMA, optimizer, scheduler, scaler, loss, data order), where
    it is (:class:`~src.train.engine.Position`, the summary rows, the best epoch) and its steps.

    Built in a fixed order from the run's seed, so that a run and its resumed continuation draw the same
    random numbers: the model's initial weights first, the RNG states of a resumed checkpoint last."""

    def __init__(self, args, data: Data, run_dir: Path, device: torch.device, procs: Processes):
        from timm.utils import ModelEmaV3, NativeScaler
        self.args, self.data, self.run_dir, self.device, self.procs = args, data, run_dir, device, procs
        _seed_everything(args.seed + procs.rank)
        self.model = _build_model(args, data.num_classes).to(device)
        self.ema = ModelEmaV3(self.model, decay=args.model_ema_decay, device=device) if args.model_ema else None
        self.optimizer = self._optimizer()
        self.scaler = NativeScaler(device=device.type) if args.amp and device.type == 'cuda' and \
            (args.amp_dtype or 'float16') == 'float16' else None
        self.autocast = autocast_for(device, args.amp, args.amp_dtype)
        accum = args.grad_accum_steps
        self.train_sampler = D.EpochSampler(len(data.train_set), seed=args.seed, rank=procs.rank,
                                            num_replicas=procs.world_size, accum_steps=accum,
                                            batch_size=args.batch_size)
        self.updates = len(self.train_sampler) // args.batch_size // accum  # optimizer updates per epoch
        if self.updates == 0:
            raise UsageError(f'{len(data.train_set)} training images give no full update of {procs.world_size} '
                             f'process(es) x batch {args.batch_size} x {accum} accumulation step(s): lower '
                             f'--batch-size or --grad-accum-steps')
        self.scheduler, self.num_epochs = self._scheduler()
        self.mixup, self.loss_fn = self._mixup_and_loss()
        self.pos, self.history, self.best = Position(), [], None
        self.files = CheckpointFiles(run_dir, keep=args.keep_checkpoints)
        self.unreadable = UnreadableLog(args.strict_images)

    def _optimizer(self):
        from timm.optim import create_optimizer_v2
        args = self.args
        kwargs = {'eps': args.opt_eps} if args.opt_eps else {}
        if args.opt.lower() in ('adam', 'adamw'):
            kwargs['fused'] = True  # one kernel per step instead of a loop over parameters (CPU and CUDA)
        return create_optimizer_v2(self.model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                   momentum=args.momentum, **kwargs)

    def _scheduler(self):
        from timm.scheduler import create_scheduler_v2
        a = self.args
        return create_scheduler_v2(
            self.optimizer, sched=a.sched, num_epochs=a.epochs, decay_epochs=a.decay_epochs, decay_rate=a.decay_rate,
            min_lr=a.min_lr, warmup_lr=a.warmup_lr, warmup_epochs=a.warmup_epochs, cooldown_epochs=a.cooldown_epochs,
            updates_per_epoch=self.updates)

    def _mixup_and_loss(self):
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        a = self.args
        if a.mixup > 0 or a.cutmix > 0 or a.cutmix_minmax is not None:
            mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, cutmix_minmax=a.cutmix_minmax,
                          prob=a.mixup_prob, switch_prob=a.mixup_switch_prob, mode=a.mixup_mode,
                          label_smoothing=a.smoothing, num_classes=self.data.num_classes)
            return mixup, SoftTargetCrossEntropy()
        if a.smoothing:
            return None, LabelSmoothingCrossEntropy(smoothing=a.smoothing)
        return None, torch.nn.CrossEntropyLoss()

    # ---- checkpoints ------------------------------------------------------------------------------
    def restore(self, resume: dict) -> None:
        """Continue from a checkpoint: weights, EMA, optimizer, scheduler, scaler, position and summary
        rows. Its RNG states go back in :meth:`restore_rng`, once everything else is built."""
        self.model.load_state_dict(resume['state_dict'])
        if self.ema is not None and resume.get('state_dict_ema') is not None:
            self.ema.module.load_state_dict(resume['state_dict_ema'])
        self.optimizer.load_state_dict(resume['optimizer'])
        self.scheduler.load_state_dict(resume['scheduler'])
        if self.scaler is not None and resume.get('scaler') is not None:
            self.scaler.load_state_dict(resume['scaler'])
        self.pos = Position(**resume['position'])
        losses = resume.get('losses')  # every process's running loss of the epoch (position holds the first's)
        if losses is not None and len(losses) == self.procs.world_size:
            self.pos.loss_sum, self.pos.loss_count = losses[self.procs.rank]
        self.history, self.best = list(resume['history']), resume.get('best')

    def restore_rng(self, resume: dict) -> None:
        rngs, world = resume['rng'], self.procs.world_size
        if len(rngs) != world:
            _log.warning(f'resuming with {world} processes, the checkpoint had {len(rngs)}: the data order '
                         f'and random draws differ from an uninterrupted run')
        set_rng_state(rngs[self.procs.rank] if self.procs.rank < len(rngs) else rngs[0])

    def snapshot(self) -> dict:
        """The checkpoint of the run as it is now (every process takes part: the RNG states and the running
        losses of the epoch are gathered)."""
        mine = (rng_state(), [self.pos.loss_sum, self.pos.loss_count])
        every = [mine]
        if self.procs.world_size > 1:
            every = [None] * self.procs.world_size
            dist.all_gather_object(every, mine)
        rngs, losses = [e[0] for e in every], [e[1] for e in every]
        return dict(format=FORMAT, arch=self.args.model, num_classes=self.data.num_classes,
                    classes=self.data.class_names, state_dict=state_dict_of(self.model),
                    state_dict_ema=state_dict_of(self.ema.module) if self.ema is not None else None,
                    optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler is not None else None,
                    position=self.pos.state_dict(), rng=rngs, losses=losses, world_size=self.procs.world_size,
                    history=self.history, best=self.best, args=dict(vars(self.args)))

    def _on_update(self, pos: Position) -> None:
        """After each optimizer update: the recovery checkpoint every ``--checkpoint-interval`` updates inside
        an epoch."""
        interval, done = self.args.checkpoint_interval, pos.step // self.args.grad_accum_steps
        if interval and done % interval == 0 and done < self.updates:
            self.save_recovery()

    def save_recovery(self) -> None:
        state = self.snapshot()
        if self.procs.is_main:
            self.files.save_recovery(state)

    def stop_preempted(self, preemption: Preemption) -> int:
        """The run got SIGTERM / SIGUSR1 (see :mod:`src.utils.preemption`): save where it is, say how to go on,
        tell the launcher, and return :data:`EXIT_PREEMPTED` once every process is done."""
        self.save_recovery()
        done = self.pos.step // self.args.grad_accum_steps
        _log.warning(f'stopped by {preemption.signal_name} at epoch {self.pos.epoch + 1} step {done}/{self.updates}: '
                     f'saved {self.run_dir / "recovery.pth.tar"}; run the same command with --resume auto to go on '
                     f'(exit code {EXIT_PREEMPTED})')
        if self.procs.is_main:
            Preemption.mark_preempted()
        if self.procs.world_size > 1:
            dist.barrier()  # no process leaves (and gets killed by its launcher) before the file is written
        return EXIT_PREEMPTED

    # ---- epochs -----------------------------------------------------------------------------------
    def train_epoch(self, model, seeded_train, epoch: int, stop) -> Optional[float]:
        """One epoch from where the position says it is; returns its mean training loss (None: ``stop()``)."""
        batch = self.args.batch_size
        seeded_train.epoch = epoch
        self.train_sampler.set_epoch(epoch, skip=self.pos.step * batch)
        loader = D.build_loader(seeded_train, self.train_sampler, batch, self.args.workers, True,
                                self.args.seed + epoch)
        return train_one_epoch(
            model, loader, self.optimizer, self.loss_fn, self.pos, self.updates, device=self.device,
            autocast=self.autocast, scheduler=self.scheduler, mixup=self.mixup, ema=self.ema, scaler=self.scaler,
            clip_grad=self.args.clip_grad, accum_steps=self.args.grad_accum_steps, unreadable=self.unreadable,
            log_interval=self.args.log_interval, on_update=self._on_update, stop=stop, num_epochs=self.num_epochs)

    def end_epoch(self, epoch: int, train_loss: float, val_loader) -> None:
        """Evaluate (and the EMA), add the summary row, step the scheduler, save the epoch's checkpoint."""
        lr = self.optimizer.param_groups[0]['lr']
        kw = dict(device=self.device, autocast=self.autocast, unreadable=self.unreadable)
        metrics = evaluate(self.model, val_loader, **kw)
        row = dict(epoch=epoch + 1, train_loss=round(train_loss, 6), eval_loss=round(metrics['eval_loss'], 6),
                   top1=round(metrics['top1'], 4), top5=round(metrics['top5'], 4), lr=lr)
        if self.ema is not None:
            m = evaluate(self.ema.module, val_loader, **kw)
            row.update(ema_eval_loss=round(m['eval_loss'], 6), ema_top1=round(m['top1'], 4),
                       ema_top5=round(m['top5'], 4))
        self.history.append(row)
        is_best = self.best is None or row['top1'] > self.best['top1']
        if is_best:
            self.best = dict(epoch=epoch + 1, top1=row['top1'])
        self.scheduler.step(epoch + 1, metrics['top1'])
        self.pos = Position(epoch=epoch + 1, num_updates=self.pos.num_updates)
        state = self.snapshot()
        if self.procs.is_main:
            self.files.save_epoch(state, epoch + 1, is_best)
            write_summary(self.history, self.run_dir / 'summary.csv')
            plot_summary(self.history, self.run_dir / 'summary.png')
            skipped = len(self.unreadable.seen)
            _log.info(f"epoch {epoch + 1}/{self.num_epochs}: train loss {train_loss:.4f}, eval loss "
                      f"{metrics['eval_loss']:.4f}, top-1 {metrics['top1']:.3f}, top-5 {metrics['top5']:.3f}"
                      + (f", unreadable images skipped {skipped}" if skipped else ''))

    def _log_start(self) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        d = self.data
        _log.info(f'{self.args.model}: {n_params / 1e6:.2f}M params, {d.num_classes} classes, input '
                  f'{d.data_cfg["input_size"]}; {len(d.train_set)} train / {len(d.val_set)} val images; '
                  f'{self.procs.world_size} process(es) on {self.device}; global batch {self.global_batch} = '
                  f'{self.procs.world_size} process(es) x batch {self.args.batch_size} x {self.args.grad_accum_steps} '
                  f'accumulation step(s), {self.updates} steps/epoch, {self.num_epochs} epochs; outputs in '
                  f'{self.run_dir}')

    @property
    def global_batch(self) -> int:
        return self.procs.world_size * self.args.batch_size * self.args.grad_accum_steps

    def run(self, resume: Optional[dict]) -> int:
        """Restore ``resume`` if given, then train the epochs left; the run's last log line says where
        its outputs are."""
        if resume is not None:
            self.restore(resume)
        model = self.model
        if self.procs.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        if self.procs.is_main:
            write_args(dict(vars(self.args)), self.run_dir / 'args.yaml')
            if self.history:
                write_summary(self.history, self.run_dir / 'summary.csv')
            self._log_start()
        a = self.args
        val_sampler = D.EpochSampler(len(self.data.val_set), shuffle=False, rank=self.procs.rank,
                                     num_replicas=self.procs.world_size, pad=False)
        val_loader = D.build_loader(self.data.val_set, val_sampler, a.validation_batch_size or a.batch_size,
                                    a.workers, False, a.seed)
        seeded_train = D.SeededSamples(self.data.train_set, a.seed)
        if resume is not None:  # last: everything built above may have drawn random numbers
            self.restore_rng(resume)
        with Preemption(device=self.device) as preemption:
            for epoch in range(self.pos.epoch, self.num_epochs):
                train_loss = self.train_epoch(model, seeded_train, epoch, preemption.requested)
                if train_loss is None:
                    return self.stop_preempted(preemption)
                self.end_epoch(epoch, train_loss, val_loader)
                if epoch + 1 < self.num_epochs and preemption.requested():  # a signal during evaluation
                    return self.stop_preempted(preemption)
        if self.procs.is_main and self.history:
            last = self.history[-1]
            _log.info(f"done: top-1 {last['top1']:.3f} on the {len(self.data.val_set)} held-out images (best "
                      f"{self.best['top1']:.3f} at epoch {self.best['epoch']}); outputs in {self.run_dir}")
        return 0


def train(args, device: torch.device, procs: Processes) -> int:
    data = prepare_data(args)
    run_dir, resume = prepare_run_folder(args, procs)
    return Training(args, data, run_dir, device, procs).run(resume)


# ---- evaluation -------------------------------------------------------------------------------------------
def _evaluate_only(args, device: torch.device, procs: Processes) -> int:
    import timm
    source = args.resume or args.initial_checkpoint
    if not (source or args.pretrained) or source == 'auto':
        raise UsageError('--evaluate needs weights: --resume CKPT, --initial-checkpoint CKPT or --pretrained')
    check_model_name(args.model)
    _, _, eval_tf = _transforms(args)
    val = D.build_dataset(args.dataset, args.data_dir, args.val_split, eval_tf, args.download)
    num_classes = _check_classes(args, D.dataset_classes(val))
    model = timm.create_model(args.model, pretrained=args.pretrained and not source, num_classes=num_classes)
    if source:
        load_weights(model, source, use_ema=args.use_ema)
    model.to(device)
    sampler = D.EpochSampler(len(val), shuffle=False, rank=procs.rank, num_replicas=procs.world_size, pad=False)
    loader = D.build_loader(val, sampler, args.validation_batch_size or args.batch_size, args.workers, False, args.seed)
    m = evaluate(model, loader, device=device, autocast=autocast_for(device, args.amp, args.amp_dtype),
                 unreadable=UnreadableLog(args.strict_images))
    if procs.is_main:
        print(f"evaluate {args.model} ({source or 'pretrained'}) on {m['n']} images: top-1 {m['top1']:.3f} "
              f"top-5 {m['top5']:.3f} loss {m['eval_loss']:.4f}", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args, _ = parse_args(argv)
        use_cuda = torch.cuda.is_available() if args.device is None else args.device.startswith('cuda')
        device, procs = setup_process((args.device or 'cuda') if use_cuda else 'cpu', launcher=args.launcher)
        try:
            return (_evaluate_only if args.evaluate else train)(args, device, procs)
        finally:
            teardown_process()
    except UsageError as e:  # a CheckpointError too
        return report(e, 'classification.py')
