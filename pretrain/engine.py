"""The pre-training loop: one optimizer step per global batch, checkpoints at epoch ends.

Kept free of setup code (see ``main.py``): it receives built objects and runs steps from a given
position, so resuming is just starting the loop at a later step.
"""
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

import torch
from torch import nn

from sparkmim.utils.distributed import DistInfo, all_reduce_mean, gather_objects
from sparkmim.utils.metrics import MetricsLogger
from sparkmim.utils.run import autocast, optimizer_step
from sparkmim.utils.schedule import Schedule
from sparkmim.utils.signals import GracefulStop

from .checkpointing import RunProgress
from .data import SkipReporter
from .optim import global_grad_norm

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving the broken state."""


@dataclass
class LoopResult:
    step: int
    stopped_by_signal: bool = False
    epoch_losses: List[float] = field(default_factory=list)


@dataclass
class PendingStep:
    """A finished step whose loss and gradient norm are still on the device."""

    step: int
    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    wd: float


@dataclass
class Loop:
    """Everything the loop needs. ``model`` is what is called (DDP / compiled wrapper), ``params``
    the raw parameters (for the gradient norm)."""

    model: nn.Module
    params: List[torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: Optional[Any]
    schedule: Schedule
    batches: Iterator[Any]   # loader batches; ``(images, failed)`` unless ``prepare_batch`` converts them
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    global_batch: int
    dist_info: DistInfo
    metrics: MetricsLogger
    skips: SkipReporter
    stop: GracefulStop
    save: Callable[[int, RunProgress], Optional[Path]]   # save(step_done, progress) -> path of the full checkpoint
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    progress: bool = True
    # steps between reads of the loss (one host-device synchronisation each), stop checks and log lines
    log_interval: int = 10
    # loader batch -> (images, failed); None when the loader already yields that (the CPU path).
    # The device-decoding path passes its decoder here (see ``device_decode.DeviceDecoder``).
    prepare_batch: Optional[Callable[[Any], Tuple[torch.Tensor, List[int]]]] = None
    # the unfinished epoch's losses and skipped-file count saved by a mid-epoch stop (resume continues them)
    resumed: RunProgress = field(default_factory=RunProgress)

    def _no_sync(self, last: bool):
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def train_step(self, step: int) -> "PendingStep":
        """Forward/backward over the accumulation micro-batches, then one LAMB step.

        Nothing here makes the host wait for the device: the loss and gradient norm stay on the
        device until :meth:`read_pending` copies a whole interval of them at once. The exception is
        ``--amp fp16``: torch's GradScaler reads its overflow flag on the host in every step (bf16
        needs no scaler)."""
        lr, wd = self.schedule.apply(self.optimizer, step)
        loss_sum = torch.zeros((), device=self.dist_info.device)
        for micro in range(self.accumulation):
            batch = next(self.batches)
            images, failed = self.prepare_batch(batch) if self.prepare_batch is not None else batch
            self.skips.report(failed)
            images = images.to(self.dist_info.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self._no_sync(micro == self.accumulation - 1):
                with autocast(self.dist_info.device, self.amp_dtype):
                    output = self.model(images)
                loss = output.loss.float() / self.accumulation
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach()
        loss_mean = all_reduce_mean(loss_sum)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = global_grad_norm(self.params).to(loss_mean.device)
        optimizer_step(self.optimizer, self.scaler)
        self.optimizer.zero_grad(set_to_none=True)
        return PendingStep(step=step, loss=loss_mean.detach(), grad_norm=grad_norm, lr=lr, wd=wd)

    def read_pending(self, pending: List["PendingStep"], since: float) -> List[Dict[str, float]]:
        """Copy the device values of the pending steps to the host in one transfer (the only point
        where the host waits for the device) and check them; ``since``: when the first of them began
        (their images/s is measured once the device has finished them).

        A non-finite loss raises :class:`NonFiniteLossError` naming the first step it appeared in.
        Checkpoints are written only after this check, so a broken state is never saved."""
        if not pending:
            return []
        values = torch.stack([torch.stack([p.loss.float(), p.grad_norm.float()]) for p in pending]).tolist()
        images_per_s = self.global_batch * len(pending) / max(time.time() - since, 1e-9)
        records = []
        for entry, (loss, grad_norm) in zip(pending, values):
            if not math.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(
                    f"loss is {loss} at step {entry.step} (epoch {entry.step // self.steps_per_epoch}); stopped "
                    "without saving; the last good checkpoint is kept. Lower the learning rate or use "
                    "--amp bf16/off, then resume")
            records.append({"step": entry.step, "loss": loss, "lr": entry.lr, "wd": entry.wd,
                            "grad_norm": grad_norm, "img_per_s": images_per_s})
        return records

    def distinct_over_processes(self, failed: Set[Union[int, str]]) -> int:
        """How many distinct unreadable files all processes met (collective): the last step of an epoch
        wraps around the epoch's order, so two processes may meet the same file, which counts once."""
        return len(set().union(*gather_objects(sorted(failed, key=str))))

    def progress_record(self, epoch_losses: List[float], skipped: int) -> RunProgress:
        return RunProgress(metrics_rows=self.metrics.rows, epoch_losses=list(epoch_losses), epoch_skipped=skipped)

    def run(self, start_step: int) -> LoopResult:
        """Steps from ``start_step``; every ``log_interval`` steps (and at epoch ends) the pending
        values are read, logged and checked, and a stop request is looked at; checkpoints at epoch ends.

        An epoch's row is written to the metrics before its checkpoint, and the checkpoint records the
        rows it covers: a crash between the two only loses rows that the resumed run writes again."""
        result = LoopResult(step=start_step)
        main = self.dist_info.is_main
        step = start_step
        bar = None
        mid_epoch = start_step % self.steps_per_epoch != 0
        epoch_losses: List[float] = list(self.resumed.epoch_losses) if mid_epoch else []
        skipped_before = self.resumed.epoch_skipped if mid_epoch else 0  # this epoch's, before the resume
        pending: List[PendingStep] = []
        last_record: Dict[str, float] = {}
        seconds_per_step: Optional[float] = None
        run_start = interval_start = time.time()
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            if bar is None and main and self.progress:
                from tqdm import tqdm

                bar = tqdm(total=self.steps_per_epoch, initial=step % self.steps_per_epoch, desc=f"epoch {epoch}",
                           dynamic_ncols=True, leave=True, mininterval=1.0)
            pending.append(self.train_step(step))
            step += 1
            if bar is not None:
                bar.update(1)
            epoch_done = step % self.steps_per_epoch == 0 or step == self.total_steps
            # a lone process may look at its own stop flag every step (no collective, no device read)
            stop_seen = self.dist_info.world_size == 1 and self.stop.requested
            if not (epoch_done or stop_seen or len(pending) >= self.log_interval):
                continue
            records = self.read_pending(pending, interval_start)
            now = time.time()
            seconds_per_step = (now - interval_start) / len(pending)
            pending, interval_start = [], now
            for record in records:
                epoch_losses.append(record["loss"])
                if main:
                    self.metrics.log({"kind": "step", "epoch": record["step"] // self.steps_per_epoch,
                                      **{k: v for k, v in record.items() if k != "step"}}, step=record["step"])
            last_record = records[-1]
            if bar is not None:
                eta = (self.total_steps - step) * seconds_per_step
                bar.set_postfix(loss=f"{last_record['loss']:.4f}", lr=f"{last_record['lr']:.2e}",
                                img_s=f"{last_record['img_per_s']:.1f}", eta=_format_duration(eta), refresh=False)
                bar.refresh()
            saved = False
            if epoch_done:
                if bar is not None:
                    bar.close()
                    bar = None
                skipped = self.distinct_over_processes(self.skips.pop_epoch_failed()) + skipped_before
                skipped_before = 0
                mean_loss = sum(epoch_losses) / max(len(epoch_losses), 1)
                result.epoch_losses.append(mean_loss)
                if main:  # TensorBoard: at the epoch's last step, which a resume from this checkpoint keeps
                    self.metrics.log({"kind": "epoch", "epoch": epoch, "loss_mean": mean_loss,
                                      "loss_last": last_record["loss"], "skipped_images": skipped,
                                      "elapsed_s": time.time() - run_start}, step=step, tensorboard_step=step - 1)
                path = self.save(step, self.progress_record([], 0))
                saved = True
                logger.info("epoch %d done (step %d/%d): mean loss %.4f, last %.4f, %d unreadable image(s) "
                            "skipped; checkpoint %s", epoch, step, self.total_steps, mean_loss, last_record["loss"],
                            skipped, path)
                epoch_losses = []
                interval_start = time.time()  # the checkpoint's time is not a step's
            if step < self.total_steps and self.stop.should_stop(self.dist_info.device):
                if bar is not None:
                    bar.close()
                path = None if saved else self.save(step, self.progress_record(
                    epoch_losses, self.distinct_over_processes(self.skips.epoch_failed) + skipped_before))
                logger.warning("stopped by %s after step %d; checkpoint %s; continue with --resume auto",
                               self.stop.signal_name or "a signal on another process", step, path or "saved above")
                result.step, result.stopped_by_signal = step, True
                return result
        if bar is not None:
            bar.close()
        result.step = step
        return result


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
