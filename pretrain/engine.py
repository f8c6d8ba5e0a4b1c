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
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from sparkmim.utils.distributed import DistInfo, all_reduce_mean
from sparkmim.utils.metrics import MetricsLogger
from sparkmim.utils.signals import GracefulStop

from .data import SkipReporter
from .optim import Schedule, global_grad_norm

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving the broken state."""


@dataclass
class LoopResult:
    step: int
    stopped_by_signal: bool = False
    epoch_losses: List[float] = field(default_factory=list)


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
    save: Callable[[int], Optional[Path]]   # save(step_done) -> path of the full checkpoint
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    progress: bool = True
    # loader batch -> (images, failed); None when the loader already yields that (the CPU path).
    # The device-decoding path passes its decoder here (see ``device_decode.DeviceDecoder``).
    prepare_batch: Optional[Callable[[Any], Tuple[torch.Tensor, List[int]]]] = None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist_info.device.type, dtype=self.amp_dtype)

    def _no_sync(self, last: bool):
        if last or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def train_step(self, step: int) -> Dict[str, float]:
        """Forward/backward over the accumulation micro-batches, then one LAMB step."""
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
                with self._autocast():
                    output = self.model(images)
                loss = output.loss.float() / self.accumulation
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += loss.detach()
        loss_value = float(all_reduce_mean(loss_sum).item())
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss is {loss_value} at step {step} (epoch {step // self.steps_per_epoch}); "
                                     "stopped without saving; the last good checkpoint is kept. Lower the "
                                     "learning rate or use --amp bf16/off, then resume")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(global_grad_norm(self.params).item())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_value, "lr": lr, "wd": wd, "grad_norm": grad_norm}

    def run(self, start_step: int) -> LoopResult:
        result = LoopResult(step=start_step)
        main = self.dist_info.is_main
        step = start_step
        bar = None
        epoch_losses: List[float] = []
        recent: List[float] = []
        run_start = time.time()
        while step < self.total_steps:
            epoch, within = divmod(step, self.steps_per_epoch)
            if bar is None and main and self.progress:
                from tqdm import tqdm

                bar = tqdm(total=self.steps_per_epoch, initial=within, desc=f"epoch {epoch}",
                           dynamic_ncols=True, leave=True, mininterval=1.0)
            tick = time.time()
            record = self.train_step(step)
            elapsed = time.time() - tick
            recent = (recent + [elapsed])[-20:]
            epoch_losses.append(record["loss"])
            images_per_s = self.global_batch / max(elapsed, 1e-9)
            if main:
                self.metrics.log({"kind": "step", "epoch": epoch, **record, "img_per_s": images_per_s}, step=step)
            step += 1
            if bar is not None:
                eta = (self.total_steps - step) * sum(recent) / len(recent)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                img_s=f"{images_per_s:.1f}", eta=_format_duration(eta), refresh=False)
                bar.update(1)
            epoch_done = step % self.steps_per_epoch == 0 or step == self.total_steps
            saved = False
            if epoch_done:
                if bar is not None:
                    bar.close()
                    bar = None
                skipped = int(all_reduce_mean(torch.tensor(float(self.skips.pop_epoch_count()),
                                                           device=self.dist_info.device)).item()
                              * self.dist_info.world_size + 0.5)
                mean_loss = sum(epoch_losses) / max(len(epoch_losses), 1)
                result.epoch_losses.append(mean_loss)
                path = self.save(step)
                saved = True
                if main:
                    self.metrics.log({"kind": "epoch", "epoch": epoch, "loss_mean": mean_loss,
                                      "loss_last": record["loss"], "skipped_images": skipped,
                                      "elapsed_s": time.time() - run_start}, step=step)
                logger.info("epoch %d done (step %d/%d): mean loss %.4f, last %.4f, %d unreadable image(s) "
                            "skipped; checkpoint %s", epoch, step, self.total_steps, mean_loss, record["loss"],
                            skipped, path)
                epoch_losses = []
            if step < self.total_steps and self.stop.should_stop(self.dist_info.device):
                if bar is not None:
                    bar.close()
                path = None if saved else self.save(step)
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
