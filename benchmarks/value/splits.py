"""Class-balanced splits: a validation set carved from the training set, and label subsets for fine-tuning.

Every choice of hyper-parameters looks at the validation split only; the test split is evaluated once
per finished model. Subsets are drawn from the training pool (training set minus validation), so they
never overlap the validation images, and depend only on (labels, fraction, seed)."""
from typing import Tuple

import torch


def _per_class_permutation(labels: torch.Tensor, cls: int, generator: torch.Generator) -> torch.Tensor:
    members = torch.nonzero(labels == cls).flatten()
    return members[torch.randperm(members.numel(), generator=generator)]


def carve_validation(labels: torch.Tensor, fraction: float, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pool indices, validation indices): ``fraction`` of each class goes to validation (at least one image)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    pool, val = [], []
    for cls in torch.unique(labels).tolist():
        members = _per_class_permutation(labels, cls, generator)
        count = max(1, round(members.numel() * fraction))
        if count >= members.numel():
            raise ValueError(f"class {cls} has {members.numel()} images: too few to carve a validation split")
        val.append(members[:count])
        pool.append(members[count:])
    return torch.cat(pool).sort().values, torch.cat(val).sort().values


def balanced_subset(labels: torch.Tensor, pool: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-balanced subset of ``pool`` with ``fraction`` of the whole training set's images
    per class (at least one per class; all of the pool for fraction 1)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    pool_labels = labels[pool]
    generator = torch.Generator().manual_seed(1_000_003 * seed + round(fraction * 1e6))
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = pool[_per_class_permutation(pool_labels, cls, generator)]
        wanted = members.numel() if fraction >= 1.0 else max(1, round(int((labels == cls).sum()) * fraction))
        chosen.append(members[:min(wanted, members.numel())])
    return torch.cat(chosen).sort().values
