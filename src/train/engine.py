"""One training epoch and one evaluation pass (single process or DDP)."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Set

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.utils import accuracy, dispatch_clip_grad

from ..utils import precision
from ..utils.errors import UsageError

__all__ = ['Position', 'UnreadableLog', 'train_one_epoch', 'evaluate']

_log = logging.getLogger('train')


@dataclass
class Position:
    """Where training is: ``epoch`` epochs done, ``step`` steps done in the next one, and the running
    training loss of that epoch (this process's sum and count)."""
    epoch: int = 0
    step: int = 0
    num_updates: int = 0
    loss_sum: float = 0.
    loss_count: int = 0

    def state_dict(self) -> dict:
        return asdict(self)


class UnreadableLog:
    """Counts images that could not be decoded (logged once each), or stops on the first if ``strict``."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.seen: Set[str] = set()

    def __call__(self, bad) -> None:
        for b in bad:
            if self.strict:
                raise UsageError(f'unreadable image {b.path} ({b.reason}): replace or remove the file, or run '
                                 f'without --strict-images to skip such files')
            if b.path not in self.seen:
                self.seen.add(b.path)
                _log.warning(f'skipping unreadable image {b.path} ({b.reason}); {len(self.seen)} skipped so far')


def _all_reduce_sum(values, device) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def train_one_epoch(model, loader, optimizer, loss_fn, pos: Position, updates: int, *, device, autocast,
                    scheduler, mixup=None, ema=None, scaler=None, clip_grad: Optional[float] = None,
                    accum_steps: int = 1, unreadable: UnreadableLog, log_interval: int = 50,
                    on_update: Optional[Callable[[Position], None]] = None,
                    stop: Optional[Callable[[], bool]] = None, num_epochs: int = 0) -> Optional[float]:
    """Train from ``pos.step`` (micro-batches done) to the end of epoch ``pos.epoch``: ``updates`` optimizer
    updates of ``accum_steps`` micro-batches each. Returns the mean training loss of the whole epoch over all
    processes, or None when ``stop()`` (asked after every update, by every process) said to stop early.

    With accumulation the loss of each micro-batch is divided by ``accum_steps`` and the gradients add up;
    under DDP only the last micro-batch of an update all-reduces them. The schedule, EMA, gradient clipping,
    ``on_update(pos)`` (recovery saves) and the log lines count optimizer updates. Every ``log_interval``
    updates one line: position, loss, lr, time per update, images per second (all processes) and the time
    left in the epoch and (given ``num_epochs``) the run."""
    model.train()
    tic = time.time()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    no_sync = getattr(model, 'no_sync', contextlib.nullcontext)
    seen = 0
    batches = iter(loader)
    while pos.step < updates * accum_steps:
        optimizer.zero_grad(set_to_none=True)
        for micro in range(accum_steps):
            last = micro == accum_steps - 1
            images, targets, bad = next(batches)
            unreadable(bad)
            if images is not None and mixup is not None and len(images) % 2:
                images, targets = images[:-1], targets[:-1]  # batch mixup needs pairs
            if images is not None and len(images):
                images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                if mixup is not None:
                    images, targets = mixup(images, targets)
                with contextlib.nullcontext() if last else no_sync():  # DDP all-reduces on the last one only
                    with autocast():
                        loss = loss_fn(model(images), targets)
                    share = loss / accum_steps if accum_steps > 1 else loss
                    if scaler is not None:
                        scaler(share, optimizer, clip_grad=clip_grad, parameters=model.parameters(),
                               need_update=last)
                    else:
                        share.backward()
                pos.loss_sum += loss.item() * len(images)
                pos.loss_count += len(images)
                seen += len(images)
            pos.step += 1
        if scaler is None:
            if clip_grad is not None:
                dispatch_clip_grad(model.parameters(), clip_grad)
            optimizer.step()
        pos.num_updates += 1
        scheduler.step_update(num_updates=pos.num_updates)
        if ema is not None:
            ema.update(getattr(model, 'module', model), step=pos.num_updates)
        done = pos.step // accum_steps
        if log_interval and (done % log_interval == 0 or done == updates):
            lr = optimizer.param_groups[0]['lr']
            elapsed = time.time() - tic
            rate = elapsed / max(1, done % log_interval or log_interval)
            eta = rate * (updates - done)
            run_eta = f', run {_hms(eta + rate * updates * (num_epochs - pos.epoch - 1))}' if num_epochs else ''
            epochs = f'/{num_epochs}' if num_epochs else ''
            _log.info(f'epoch {pos.epoch + 1}{epochs} step {done}/{updates} ({100 * done / updates:.0f}%) loss '
                      f'{pos.loss_sum / max(1, pos.loss_count):.4f} lr {lr:.3e} {rate:.3f} s/step '
                      f'{seen * world / max(elapsed, 1e-9):.1f} img/s ETA epoch {_hms(eta)}{run_eta}')
            tic, seen = time.time(), 0
        if on_update is not None:
            on_update(pos)
        if stop is not None and stop():
            return None
    total, count = _all_reduce_sum([pos.loss_sum, pos.loss_count], device).tolist()
    return total / max(1., count)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


@torch.no_grad()
def evaluate(model, loader, *, device, autocast, unreadable: UnreadableLog) -> dict:
    """Cross-entropy loss, top-1 and top-5 (%) over the whole split (all processes' shards summed)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for images, targets, bad in loader:
        unreadable(bad)
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        with autocast():
            logits = model(images)
        logits = logits.float()
        if targets.max() >= logits.shape[1]:
            raise UsageError(f'the data has class index {int(targets.max())} but the model only '
                             f'{logits.shape[1]} outputs: set --num-classes to the dataset\'s class count')
        top1, top5 = accuracy(logits, targets, topk=(1, 5))
        n = len(targets)
        sums += torch.tensor([F.cross_entropy(logits, targets, reduction='sum').item(),
                              round(top1.item() * n / 100), round(top5.item() * n / 100), n], dtype=torch.float64)
    loss, c1, c5, n = _all_reduce_sum(sums.tolist(), device).tolist()
    if n == 0:
        raise UsageError('evaluation saw no readable image: check the validation split')
    return dict(eval_loss=loss / n, top1=100 * c1 / n, top5=100 * c5 / n, n=int(n))


def autocast_for(device: torch.device, amp: bool, amp_dtype: Optional[str]):
    """The autocast context to use: a no-op without ``amp``; with it, fp16 (or ``amp_dtype``) on CUDA, and on
    CPU bf16 (or ``amp_dtype``) where the CPU computes it natively, fp32 with one warning where it is
    emulated (:func:`src.utils.precision.amp_dtype`)."""
    if not amp:
        return contextlib.nullcontext
    try:
        dtype = precision.amp_dtype(device.type, getattr(torch, amp_dtype) if amp_dtype else None, _log.warning)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if dtype is None:
        return contextlib.nullcontext
    _log.info(f'mixed precision: {str(dtype).replace("torch.", "")} autocast on {device.type}')
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
