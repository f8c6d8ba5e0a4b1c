"""The classifiers: a timm model for full fine-tuning, or a frozen backbone + linear head for probing."""
import logging
from typing import Any, Dict, Optional

import torch
from torch import nn

from sparkmim.sparse.encoder import create_model

logger = logging.getLogger(__name__)


def create_classifier(model_name: str, num_classes: int, drop_path: float,
                      model_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A timm classifier with a fresh ``num_classes`` head and stochastic depth ``drop_path``."""
    return create_model(model_name, num_classes=num_classes, drop_path_rate=drop_path, **(model_kwargs or {}))


class LinearProbe(nn.Module):
    """A frozen timm backbone followed by ``BatchNorm1d(affine=False)`` and a linear classifier.

    The BatchNorm without affine parameters whitens the frozen features so one lr fits backbones
    whose feature scales differ (the usual SSL linear evaluation); it is folded into the linear
    layer's job, not a trainable part. The backbone stays in eval mode whatever ``train()`` says,
    so its BatchNorm statistics are those of pre-training."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        width = backbone.num_features
        self.head = nn.Sequential(nn.BatchNorm1d(width, affine=False, eps=1e-6), nn.Linear(width, num_classes))
        nn.init.trunc_normal_(self.head[1].weight, std=0.01)
        nn.init.zeros_(self.head[1].bias)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(images)
        return self.head(features.float())


def create_linear_probe(model_name: str, num_classes: int,
                        model_kwargs: Optional[Dict[str, Any]] = None) -> LinearProbe:
    """Backbone = the timm model without classifier (pooled features out), then the probe head."""
    backbone = create_model(model_name, num_classes=0, **(model_kwargs or {}))
    return LinearProbe(backbone, num_classes)


def count_parameters(model: nn.Module) -> Dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_M": round(total / 1e6, 3), "trainable_M": round(trainable / 1e6, 3)}
