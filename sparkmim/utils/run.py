"""What both trainers (spark-pretrain, spark-finetune) set up the same way: seeding and mixed precision.

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


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
