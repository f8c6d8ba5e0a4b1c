"""Per-step schedules as pure functions of the step, shared by pre-training and fine-tuning.

The reference recipe updates lr and weight decay every step (not every epoch): a linear warmup from
``warmup_start`` x peak to peak, then a cosine to ``final`` x peak reached on the last step; weight
decay follows a cosine from its start value to its end value over the whole run.
"""
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Tuple


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float,
                     warmup_start: float = 0.005, final: float = 0.001) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = round(warmup_steps)
    if step < warmup_steps:
        return warmup_start * peak_lr + (1 - warmup_start) * peak_lr * step / warmup_steps
    span = max(total_steps - 1 - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final * peak_lr + (1 - final) * peak_lr * (0.5 + 0.5 * math.cos(math.pi * progress))


def cosine_value(step: int, total_steps: int, start: float, end: float) -> float:
    """A value annealed from ``start`` (step 0) to ``end`` (last step) along a half cosine."""
    progress = min(step / max(total_steps - 1, 1), 1.0)
    return end + (start - end) * (0.5 + 0.5 * math.cos(math.pi * progress))


def apply_lr_wd(param_groups: Iterable[dict], lr: float, weight_decay: float) -> Tuple[float, float]:
    """Write ``lr`` and ``weight_decay`` into optimizer groups, honouring each group's ``lr_scale``
    (layer-wise decay) and ``weight_decay_scale`` (0 for parameters that take no decay).

    Returns the largest lr and weight decay written, for logging."""
    max_lr = max_wd = 0.0
    for group in param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        group["weight_decay"] = weight_decay * group.get("weight_decay_scale", 1.0)
        max_lr, max_wd = max(max_lr, group["lr"]), max(max_wd, group["weight_decay"])
    return max_lr, max_wd


@dataclass(frozen=True)
class Schedule:
    """The per-step schedule of both trainers: lr linear warm-up then cosine; weight decay along a
    cosine from ``weight_decay`` to ``weight_decay_end`` (None: constant, as in fine-tuning)."""

    total_steps: int
    warmup_steps: float
    peak_lr: float
    weight_decay: float
    weight_decay_end: Optional[float] = None
    warmup_start: float = 0.005
    final_lr: float = 0.001

    def lr(self, step: int) -> float:
        return warmup_cosine_lr(step, self.total_steps, self.warmup_steps, self.peak_lr,
                                warmup_start=self.warmup_start, final=self.final_lr)

    def wd(self, step: int) -> float:
        if self.weight_decay_end is None:
            return self.weight_decay
        return cosine_value(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def apply(self, optimizer: Any, step: int) -> Tuple[float, float]:
        """Write this step's lr and weight decay into ``optimizer``; returns the largest written."""
        return apply_lr_wd(optimizer.param_groups, self.lr(step), self.wd(step))
