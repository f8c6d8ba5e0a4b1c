"""Fine-tuning one classifier on a label subset: one recipe for SparK-initialised and scratch models.

The images live on the training device as uint8; augmentation (a random scaled crop and a horizontal
flip, one affine resampling per batch) runs there too, so a GPU is never waiting for a loader."""
import logging
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from .data import normalise

logger = logging.getLogger(__name__)


@dataclass
class FinetuneRecipe:
    epochs: int
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.1
    min_scale: float = 0.7          # smallest crop side, as a fraction of the image side
    min_steps: int = 100


def augment(x: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Random crop of side s in [min_scale, 1] at a random place, resized back, and a random flip."""
    batch = x.shape[0]
    device = x.device
    scale = torch.empty(batch, device=device).uniform_(min_scale, 1.0, generator=generator)
    shift = (torch.rand(batch, 2, device=device, generator=generator) * 2 - 1) * (1 - scale)[:, None]
    flip = torch.where(torch.rand(batch, device=device, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy (%) of ``model`` on uint8 ``images`` (any device; moved per batch)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, images.shape[0], batch):
        x = normalise(images[start:start + batch].to(device, non_blocking=True))
        correct += int((model(x).argmax(1).cpu() == labels[start:start + batch]).sum())
    return 100.0 * correct / max(1, images.shape[0])


def finetune(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: FinetuneRecipe, seed: int,
             amp_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """Train all of ``model`` (AdamW, linear warm-up then cosine, label smoothing) on ``images``/``labels``
    for ``recipe.epochs`` epochs (at least ``min_steps`` steps); returns the last training loss."""
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    steps_per_epoch = max(1, math.ceil(labels.numel() / recipe.batch))
    total = max(recipe.min_steps, steps_per_epoch * recipe.epochs)
    warmup = max(1, round(recipe.warmup_fraction * total))
    optimizer = create_optimizer_v2(model, opt="adamw", lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else
        0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
    generator = torch.Generator(device=device).manual_seed(seed)
    order_generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = torch.zeros((), device=device)
    step = 0
    while step < total:
        order = torch.randperm(labels.numel(), generator=order_generator).to(device)
        for start in range(0, labels.numel(), recipe.batch):
            if step >= total:
                break
            index = order[start:start + recipe.batch]
            if index.numel() < 2:  # BatchNorm needs two samples
                continue
            x = augment(normalise(images[index]), recipe.min_scale, generator)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(model(x), labels[index], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses = loss.detach()
            step += 1
    return {"steps": float(total), "last_loss": float(losses)}
