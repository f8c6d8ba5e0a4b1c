"""One training epoch and one evaluation pass: the loop bodies, kept apart from setup.

The lr follows ``warmup_cosine_lr`` per optimizer step (not per epoch) and is written into each
group through ``apply_lr_wd``, so layer-wise decay is just each group's ``lr_scale``.
"""
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from sparkmim.utils.distributed import is_dist
from sparkmim.utils.metrics import MetricsLogger
from sparkmim.utils.run import autocast, optimizer_step
from sparkmim.utils.schedule import Schedule

from .data import Batch

logger = logging.getLogger(__name__)


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class Trainer:
    """Everything one epoch needs; ``model`` may be DDP-wrapped, ``module`` is the bare model."""
    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    schedule: Schedule
    device: torch.device
    mixup: Optional[Any] = None
    ema: Optional[Any] = None
    scaler: Optional[Any] = None
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    clip_grad: float = 0.0
    accum_steps: int = 1
    log_interval: int = 50
    progress: bool = True
    metrics: Optional[MetricsLogger] = None

    def trainable(self) -> List[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def _to_device(batch: Batch, device: torch.device, channels_last: bool) -> Batch:
    images = batch.images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return Batch(images, batch.targets.to(device, non_blocking=True), batch.skipped)


def _sum_across(values: List[float], device: torch.device) -> List[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if is_dist():
        dist.all_reduce(tensor)
    return tensor.tolist()


class _LossReader:
    """Losses stay on the device until a log step: one host read per ``log_interval`` optimizer steps (not
    one per micro-batch), so a GPU never waits for the host; a non-finite loss is reported at the first read
    after it, naming its step."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self.window: List[Any] = []  # (optimizer step, loss tensor) since the last read

    def add(self, step: int, loss: torch.Tensor) -> None:
        detached = loss.detach().float()
        self.total += detached
        self.count += 1
        self.window.append((step, detached))

    def read(self, epoch: int) -> float:
        """The window's losses on the host (one synchronisation); the last one is returned.

        Every process reads at the same steps, and all of them stop when any one saw a non-finite loss:
        a process stopping alone would leave the others waiting in their next gradient reduction."""
        if not self.window:
            return float("nan")
        values = torch.stack([loss for _, loss in self.window]).tolist()
        bad = next(((step, value) for (step, _), value in zip(self.window, values) if not math.isfinite(value)), None)
        if _sum_across([float(bad is not None)], self.total.device)[0] > 0:
            where = f"loss is {bad[1]} at epoch {epoch} step {bad[0]}" if bad is not None else \
                f"another process's loss is not finite at epoch {epoch} (by step {self.window[-1][0]})"
            raise DivergenceError(f"{where}; lower --base-lr, enable --clip-grad, or use --amp bf16 instead of fp16")
        self.window = []
        return values[-1]


def train_one_epoch(trainer: Trainer, loader, epoch: int, step: int, steps_per_epoch: int,
                    is_main: bool) -> Dict[str, float]:
    """Train ``steps_per_epoch`` optimizer steps starting at global step ``step``.

    Returns the epoch's mean loss (over all processes), last lr, skipped images and the new step."""
    t = trainer
    t.model.train()
    losses = _LossReader(t.device)
    skipped, grad_norm, lr = 0, torch.zeros(()), 0.0
    micro_batches = steps_per_epoch * t.accum_steps
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", disable=not (is_main and t.progress),
               dynamic_ncols=True, leave=False)
    params = t.trainable()
    t.optimizer.zero_grad(set_to_none=True)
    for index, raw in enumerate(loader):
        if index >= micro_batches:
            break
        batch = _to_device(raw, t.device, t.channels_last)
        skipped += batch.skipped
        images, targets = batch.images, batch.targets
        if t.mixup is not None and images.shape[0] % 2:
            images, targets = images[:-1], targets[:-1]  # mixup pairs the batch with its reverse
        if images.shape[0] == 0:
            raise RuntimeError(f"every image of a training batch was unreadable (epoch {epoch}); "
                               f"check the dataset")
        if t.mixup is not None:
            images, targets = t.mixup(images, targets)
        last_micro = (index + 1) % t.accum_steps == 0
        if last_micro:
            lr, _ = t.schedule.apply(t.optimizer, step)
        sync = contextlib.nullcontext() if last_micro or not hasattr(t.model, "no_sync") else t.model.no_sync()
        with sync:
            with autocast(t.device, t.amp_dtype):
                logits = t.model(images)
                loss = t.criterion(logits.float(), targets)
            scaled = loss / t.accum_steps
            (t.scaler.scale(scaled) if t.scaler is not None else scaled).backward()
        losses.add(step, loss)
        if not last_micro:
            continue
        if t.scaler is not None:
            t.scaler.unscale_(t.optimizer)
        if t.clip_grad > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.clip_grad)  # read at log steps only
        optimizer_step(t.optimizer, t.scaler)
        t.optimizer.zero_grad(set_to_none=True)
        if t.ema is not None:
            t.ema.update(t.module)
        step += 1
        bar.update(1)
        if step % t.log_interval == 0 or step == 1:
            loss_value = losses.read(epoch)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if t.metrics is not None:
                # epochs counted from 1, as the epoch rows and the log count them
                row = {"kind": "train_step", "epoch": epoch + 1, "loss": loss_value, "lr": lr}
                if t.clip_grad > 0:  # the norm is only computed to clip (it was written as "nan" otherwise)
                    row["grad_norm"] = float(grad_norm)
                t.metrics.log(row, step=step, prefix="train/")
    bar.close()
    losses.read(epoch)  # the steps since the last log step (and any non-finite loss among them)
    total_loss, total_count, total_skipped = _sum_across([float(losses.total), losses.count, skipped], t.device)
    return {"train_loss": total_loss / max(total_count, 1), "lr": lr, "train_skipped": int(total_skipped),
            "step": step}


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) over the whole validation set, summed across processes; top-5
    becomes top-k with k = number of classes when there are fewer than 5."""
    was_training = model.training
    model.eval()
    seen = skipped = 0
    correct = torch.zeros(2, dtype=torch.long, device=device)  # top-1, top-k hits: read once, after the loop
    for raw in loader:
        batch = _to_device(raw, device, channels_last)
        skipped += batch.skipped
        if batch.images.shape[0] == 0:
            continue
        with autocast(device, amp_dtype):
            logits = model(batch.images)
        k = min(5, logits.shape[1])
        top = logits.float().topk(k, dim=1).indices
        hits = top.eq(batch.targets[:, None])
        correct += torch.stack((hits[:, 0].sum(), hits.any(dim=1).sum()))
        seen += batch.targets.shape[0]
    model.train(was_training)
    correct1, correct5 = correct.tolist()
    correct1, correct5, seen, skipped = _sum_across([correct1, correct5, seen, skipped], device)
    if seen == 0:
        raise RuntimeError("the validation set has no readable images")
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "images": int(seen),
            "skipped": int(skipped)}
