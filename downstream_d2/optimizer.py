"""The fine-tuning optimizer: AdamW or SGD over Detectron2's parameter groups, with layer-wise lr decay.

Detectron2's own ``get_default_optimizer_params`` builds the groups (norm/bias weight-decay rules
from the config); the decay enters through its ``lr_factor_func`` argument. Releases older than
that argument get the same result by scaling the lr of each parameter in the groups it returned.
"""
import inspect
import logging
from collections import defaultdict
from typing import Any, Callable, Dict, List

import torch

from .lr_decay import ResNetLayerDecay

logger = logging.getLogger(__name__)

OPTIMIZERS = ("ADAMW", "SGD")


def layer_decay_for(model: torch.nn.Module, decay: float) -> ResNetLayerDecay:
    """The lr-factor function for ``model``'s depth (its number of res4 blocks)."""
    return ResNetLayerDecay.from_param_names((name for name, _ in model.named_parameters()), decay)


def _scale_groups(model: torch.nn.Module, groups: List[Dict[str, Any]],
                  lr_factor: Callable[[str], float]) -> List[Dict[str, Any]]:
    """Per-parameter lr scaling of already-built groups (for Detectron2 without ``lr_factor_func``)."""
    from detectron2.solver.build import reduce_param_groups

    names = {id(param): name for name, param in model.named_parameters()}
    scaled = []
    for group in groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for param in group["params"]:
            scaled.append({**hyper, "params": [param], "lr": hyper["lr"] * lr_factor(names[id(param)])})
    return reduce_param_groups(scaled)


def build_param_groups(cfg: Any, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """Parameter groups with lr = BASE_LR x layer factor and Detectron2's weight-decay rules."""
    from detectron2.solver.build import get_default_optimizer_params

    lr_factor = layer_decay_for(model, float(cfg.SOLVER.LR_DECAY))
    kwargs = dict(base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
                  bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    if "lr_factor_func" in inspect.signature(get_default_optimizer_params).parameters:
        return get_default_optimizer_params(model, lr_factor_func=lr_factor, **kwargs)
    logger.info("this Detectron2 has no lr_factor_func; scaling its parameter groups instead")
    return _scale_groups(model, get_default_optimizer_params(model, **kwargs), lr_factor)


def describe_lr_factors(model: torch.nn.Module, decay: float) -> str:
    """One line per distinct factor with the number of parameters and their layer id (for the log)."""
    lr_factor = layer_decay_for(model, decay)
    by_layer: Dict[int, List[str]] = defaultdict(list)
    for name, param in model.named_parameters():
        if param.requires_grad:
            by_layer[lr_factor.layer_id(name)].append(name)
    return "\n".join(
        f"layer {layer:2d}: lr x {decay:g}^{lr_factor.num_layers + 1 - layer} = "
        f"{lr_factor(names[0]):.6g} ({len(names)} tensors, e.g. {names[0]})"
        for layer, names in sorted(by_layer.items()))


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (ADAMW or SGD) over the decayed groups, with Detectron2's optional
    gradient clipping (``SOLVER.CLIP_GRADIENTS``)."""
    from detectron2.solver.build import maybe_add_gradient_clipping

    name = str(cfg.SOLVER.OPTIMIZER).upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {', '.join(OPTIMIZERS)}, got '{cfg.SOLVER.OPTIMIZER}'")
    logger.info("layer-wise lr decay %g:\n%s", cfg.SOLVER.LR_DECAY, describe_lr_factors(model, float(cfg.SOLVER.LR_DECAY)))
    groups = build_param_groups(cfg, model)
    if name == "ADAMW":
        optimizer_class, extra = torch.optim.AdamW, {}
    else:
        optimizer_class, extra = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    optimizer_class = maybe_add_gradient_clipping(cfg, optimizer_class)
    return optimizer_class(groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **extra)
