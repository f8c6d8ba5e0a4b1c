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


def _grouped(model: nn.Module, include_frozen: bool) -> Dict[str, List]:
    """(name, parameter) pairs of the decayed and the exempt group, in the optimizer's order."""
    groups: Dict[str, List] = {"decay": [], "no_decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad or include_frozen:
            groups["decay" if takes_decay(name, param) else "no_decay"].append((name, param))
    return groups


def param_groups(model: nn.Module) -> List[Dict]:
    """Two groups: decayed weights (``weight_decay_scale`` 1) and exempt ones (0). The schedule
    writes the actual decay into each group every step via ``apply_lr_wd``."""
    grouped = _grouped(model, include_frozen=False)
    logger.debug("parameters without weight decay: %s", ", ".join(name for name, _ in grouped["no_decay"]))
    logger.info("optimizer groups: %d tensors with weight decay, %d without",
                len(grouped["decay"]), len(grouped["no_decay"]))
    groups = [{"params": [param for _, param in grouped["decay"]], "weight_decay_scale": 1.0, "lr_scale": 1.0,
               "group_name": "decay"},
              {"params": [param for _, param in grouped["no_decay"]], "weight_decay_scale": 0.0, "lr_scale": 1.0,
               "group_name": "no_decay"}]
    return [group for group in groups if group["params"]]


def without_frozen_parameters(saved: Dict, model: nn.Module) -> Dict:
    """An optimizer state written before the encoder froze the parameters no feature map uses (ConvNeXt's
    head norm...) lists them in its groups, without any state since they never had a gradient; this is
    that state for the optimizer :func:`param_groups` builds now. Any other state is returned as it is."""
    earlier = [group for group in _grouped(model, include_frozen=True).values() if group]
    if [len(group["params"]) for group in saved["param_groups"]] != [len(group) for group in earlier] or \
            all(param.requires_grad for group in earlier for _, param in group):
        return saved
    groups = []
    for saved_group, group in zip(saved["param_groups"], earlier):
        kept = [index for index, (_, param) in zip(saved_group["params"], group) if param.requires_grad]
        if kept:
            groups.append({**saved_group, "params": kept})
    kept_ids = {index for group in groups for index in group["params"]}
    logger.info("the checkpoint's optimizer lists %d parameter tensor(s) that are frozen now; left out",
                sum(len(group["params"]) for group in saved["param_groups"]) - len(kept_ids))
    return {"state": {index: value for index, value in saved["state"].items() if index in kept_ids},
            "param_groups": groups}


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
