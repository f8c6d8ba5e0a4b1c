"""Optimizer, loss and mixup built from the resolved configuration.

The lr and weight decay written here are placeholders: every step sets them per group through
``sparkmim.utils.schedule.apply_lr_wd`` (group ``lr_scale`` = layer decay, ``weight_decay_scale`` = 0
for biases and 1-D parameters).
"""
from typing import Any, List, Optional

import torch
from torch import nn

from .config import FinetuneConfig


def create_optimizer(groups: List[dict], config: FinetuneConfig) -> torch.optim.Optimizer:
    name, betas = config.opt, tuple(config.opt_betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=config.opt_eps or 1e-8, weight_decay=0.0)
    if name == "lamb":
        from timm.optim import Lamb
        # as the reference fine-tuning: trust ratio on every parameter, no bias correction and no
        # clipping inside LAMB (clip with --clip-grad instead)
        return Lamb(groups, lr=0.0, betas=betas, eps=config.opt_eps or 1e-6, weight_decay=0.0,
                    bias_correction=False, always_adapt=True, max_grad_norm=None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=config.momentum, weight_decay=0.0)
    if name == "lars":
        from timm.optim import Lars
        return Lars(groups, lr=0.0, momentum=config.momentum, weight_decay=0.0)
    raise ValueError(f"unknown optimizer '{name}' (adamw, lamb, sgd, lars)")


def create_mixup(config: FinetuneConfig, num_classes: int) -> Optional[Any]:
    """timm Mixup/CutMix (batch mode, label smoothing folded into the soft targets), or None."""
    if config.mixup <= 0 and config.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
                 switch_prob=config.mixup_switch_prob, mode="batch",
                 label_smoothing=config.label_smoothing, num_classes=num_classes)


def create_criterion(config: FinetuneConfig, mixup_active: bool) -> nn.Module:
    """The training loss. With mixup the targets are soft (label smoothing already folded in):
    soft-target CE, or BCE for 'bce' (the reference's choice with LAMB). Without mixup: BCE with
    its own smoothing, or label-smoothing CE."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    loss, smoothing = config.loss, config.label_smoothing
    if loss == "bce":
        return BinaryCrossEntropy(smoothing=0.0 if mixup_active else smoothing, target_threshold=None)
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()
