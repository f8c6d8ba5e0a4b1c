"""LAMB with the paper's weight-decay exemptions (the per-step schedule is
:class:`sparkmim.utils.schedule.Schedule`, shared with fine-tuning).

timm's ``Lamb`` clips by the *global* gradient norm itself (``max_grad_norm``: all groups' gradients
are scaled by ``max(1, norm / max_grad_norm)`` before the moments are updated), which is the
paper's "global grad-norm clip 5"; so no separate ``clip_grad_norm_`` is applied.
"""
import logging
from typing import Dict, Iterable, List, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

# parameters whose names contain these never take weight decay (besides 1-D tensors and biases)
NO_DECAY_KEYS = ("mask_token", "gamma", "cls_token", "pos_embed")


def takes_decay(name: str, param: torch.Tensor) -> bool:
    return not (param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_KEYS))


def param_groups(model: nn.Module) -> List[Dict]:
    """Two groups: decayed weights (``weight_decay_scale`` 1) and exempt ones (0). The schedule
    writes the actual decay into each group every step via ``apply_lr_wd``."""
    decay, no_decay, names = [], [], {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if takes_decay(name, param):
            decay.append(param)
            names["decay"].append(name)
        else:
            no_decay.append(param)
            names["no_decay"].append(name)
    logger.debug("parameters without weight decay: %s", ", ".join(names["no_decay"]))
    logger.info("optimizer groups: %d tensors with weight decay, %d without", len(decay), len(no_decay))
    groups = [{"params": decay, "weight_decay_scale": 1.0, "lr_scale": 1.0, "group_name": "decay"},
              {"params": no_decay, "weight_decay_scale": 0.0, "lr_scale": 1.0, "group_name": "no_decay"}]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, lr: float, betas: Sequence[float], clip_grad: float) -> torch.optim.Optimizer:
    """timm's LAMB; ``clip_grad`` <= 0 disables its global-norm clipping."""
    from timm.optim import Lamb

    return Lamb(param_groups(model), lr=lr, betas=(float(betas[0]), float(betas[1])), weight_decay=0.0,
                max_grad_norm=clip_grad if clip_grad and clip_grad > 0 else None)


def global_grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all gradients together (what LAMB clips), for logging and sanity checks."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
