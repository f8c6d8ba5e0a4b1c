"""What both trainers (spark-pretrain, spark-finetune) set up the same way: seeding, mixed precision
(autocast dtype and fp16 grad scaler) and the DDP wrapper.

One vocabulary for ``--amp``: ``off``, ``bf16``, ``fp16``. spark-finetune's earlier spelling ``none``
is still accepted for one release, with a deprecation warning."""
import logging
import random
from typing import Dict, Optional

import numpy as np
import torch

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


def grad_scaler(amp: str, device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A gradient scaler for fp16 autocast (None otherwise: bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if canonical_amp(amp) == "fp16" else None


def wrap_ddp(model: torch.nn.Module, device: torch.device, local_rank: int) -> torch.nn.Module:
    """DistributedDataParallel on the process's own GPU (or CPU/gloo); buffers are not broadcast, since the
    trainers keep BatchNorm statistics synchronised themselves (SyncBatchNorm) or per process."""
    device_ids = [local_rank] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
