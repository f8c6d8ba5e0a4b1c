"""What both trainers (spark-pretrain, spark-finetune) set up the same way: seeding, mixed precision
(autocast dtype and fp16 grad scaler), how a global batch splits, and the DDP wrapper.

One vocabulary for ``--amp``: ``off``, ``bf16``, ``fp16``. spark-finetune's earlier spelling ``none``
is still accepted for one release, with a deprecation warning. One vocabulary for the batch: the
global ``--batch-size``, split over processes, then either ``--micro-batch`` (images per forward pass)
or ``--accum-steps`` (forward passes per optimizer step): both trainers take both."""
import contextlib
import inspect
import logging
import os
import random
from dataclasses import dataclass
from typing import ContextManager, Dict, Optional

import numpy as np
import torch

from .config import ConfigError

logger = logging.getLogger(__name__)

AMP_DTYPES: Dict[str, Optional[torch.dtype]] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = tuple(AMP_DTYPES)
DEPRECATED_AMP = {"none": "off"}  # old spelling -> current; removed in the release after next


def canonical_amp(value: str) -> str:
    """``value`` in the current vocabulary (a deprecated spelling is translated with a warning)."""
    if value in DEPRECATED_AMP:
        logger.warning("--amp %s is deprecated and will be removed in the next release; use --amp %s",
                       value, DEPRECATED_AMP[value])
        return DEPRECATED_AMP[value]
    return value


def amp_dtype(value: str) -> Optional[torch.dtype]:
    """The autocast dtype of an ``--amp`` value (None = full precision)."""
    return AMP_DTYPES[canonical_amp(value)]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """Autocast to ``dtype`` on ``device``'s type; nothing for ``dtype`` None (full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(amp: str, device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A gradient scaler for fp16 autocast (None otherwise: bf16 and fp32 need none)."""
    if canonical_amp(amp) != "fp16":
        return None
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3: one class for every device type
        return torch.amp.GradScaler(device.type)
    if device.type == "cuda":  # torch 2.1 and 2.2, which the package still supports
        return torch.cuda.amp.GradScaler()
    raise ConfigError(f"--amp fp16 on {device.type} needs torch >= 2.3 (this is torch {torch.__version__}); "
                      "use --amp bf16 or off")


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: Optional["torch.amp.GradScaler"]) -> None:
    """``optimizer.step()``, through ``scaler`` under fp16: it skips a step whose gradients overflowed and
    adapts its scale (call ``scaler.unscale_`` first to clip or read the gradients)."""
    if scaler is None:
        optimizer.step()
        return
    scaler.step(optimizer)
    scaler.update()


def wrap_ddp(model: torch.nn.Module, device: torch.device, local_rank: int) -> torch.nn.Module:
    """DistributedDataParallel on the process's own GPU (or CPU/gloo); buffers are not broadcast, since the
    trainers keep BatchNorm statistics synchronised themselves (SyncBatchNorm) or per process."""
    device_ids = [local_rank if device.index is None else device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    # newer torch deprecates broadcast_buffers for forward_sync_buffers, which still copies rank 0's buffers once
    # at construction (equal on every rank then: same seed, or the same checkpoint) but not at each forward
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=device_ids, **no_sync)


MAX_DEFAULT_WORKERS = 8


def check_workers(workers: Optional[int]) -> None:
    """``--workers`` is a count of loader processes, or None for :func:`loader_workers`' default."""
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be 0 (load in the training process) or more, got {workers}")


def loader_workers(workers: Optional[int]) -> int:
    """``--workers``, or by default the CPUs this process may use (its affinity, which a scheduler's cgroup or
    ``taskset`` narrows) shared among the training processes of the node, at most 8 and at least 1: more
    loader processes than cores only slow every one of them down (and torch's DataLoader warns)."""
    if workers is not None:
        return int(workers)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes_on_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, usable // processes_on_node))


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class BatchLayout:
    """A global batch = processes x accumulation steps x micro-batch (each forward pass's images)."""

    global_batch: int
    processes: int
    micro_batch: int

    @property
    def per_process(self) -> int:
        return self.global_batch // self.processes

    @property
    def accum_steps(self) -> int:
        return self.per_process // self.micro_batch


def batch_layout(global_batch: int, processes: int, micro_batch: Optional[int] = None,
                 accum_steps: Optional[int] = None) -> BatchLayout:
    """Split ``global_batch`` over ``processes``, then by ``micro_batch`` or ``accum_steps`` (neither:
    one forward pass per step); raises :class:`ConfigError` naming the options that do not divide."""
    for name, value in (("--batch-size", global_batch), ("--micro-batch", micro_batch), ("--accum-steps", accum_steps)):
        if value is not None and int(value) <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if global_batch % processes:
        raise ConfigError(f"--batch-size {global_batch} is not divisible by the {processes} processes")
    per_process = global_batch // processes
    where = f"the per-process batch {per_process} (= --batch-size {global_batch} / {processes} processes)"
    if accum_steps is not None:
        if per_process % accum_steps:
            raise ConfigError(f"--accum-steps {accum_steps} must divide {where}")
        if micro_batch is not None and micro_batch * accum_steps != per_process:
            raise ConfigError(f"--micro-batch {micro_batch} x --accum-steps {accum_steps} must equal {where}; "
                              "give only one of them")
        micro_batch = per_process // accum_steps
    micro_batch = int(micro_batch or per_process)
    if per_process % micro_batch:
        raise ConfigError(f"--micro-batch {micro_batch} must divide {where}")
    return BatchLayout(global_batch, processes, micro_batch)
