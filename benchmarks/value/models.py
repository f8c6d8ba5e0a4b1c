"""The two contenders of the value benchmark: the same architecture, randomly initialised or with SparK's encoder."""
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from sparkmim.sparse.encoder import create_model

logger = logging.getLogger(__name__)


def create_classifier(model: str, num_classes: int, seed: int, encoder_weights: Optional[Path] = None) -> nn.Module:
    """``model`` (``package.module:factory`` or a timm name) with a ``num_classes`` head, initialised from
    ``seed``; with ``encoder_weights`` (a ``*_encoder_timm.pth`` of ``spark-pretrain``) every tensor but the
    classifier is replaced by the pre-trained one, so the two contenders differ in nothing else."""
    torch.manual_seed(seed)
    network = create_model(model, num_classes=num_classes)
    if encoder_weights is not None:
        state = torch.load(encoder_weights, map_location="cpu", weights_only=True)
        missing, unexpected = network.load_state_dict(state, strict=False)
        head = {f"{name}.{key}" for name, module in network.named_modules()
                if module is network.get_classifier() for key in module.state_dict()}
        if unexpected or set(missing) - head:
            raise ValueError(f"{encoder_weights} does not fit {model}: missing {sorted(set(missing) - head)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
    return network
