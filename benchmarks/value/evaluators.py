"""Frozen-feature evaluations: weighted kNN (cosine) and a linear probe whose L2 strength is chosen on validation."""
import logging
from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import normalise

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(model: nn.Module, images_uint8: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """Globally average-pooled features of the last stage (eval mode), as float32 on the CPU."""
    model.eval()
    out = []
    for start in range(0, images_uint8.shape[0], batch):
        x = normalise(images_uint8[start:start + batch].to(device, non_blocking=True))
        out.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Top-1 accuracy (%) of a k-nearest-neighbour vote on cosine similarity, each neighbour weighted by
    exp(similarity / temperature) (the weighted kNN monitor of InstDisc and DINO)."""
    bank = F.normalize(train_features, dim=1)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, bank.shape[0])
    correct = 0
    for start in range(0, test_features.shape[0], chunk):
        query = F.normalize(test_features[start:start + chunk], dim=1)
        similarity, index = (query @ bank.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[index], (similarity / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[start:start + chunk]).sum())
    return 100.0 * correct / test_features.shape[0]


def _fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                iterations: int) -> nn.Linear:
    torch.manual_seed(0)
    head = nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iterations, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), labels) + 0.5 * weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


@torch.no_grad()
def _accuracy(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((head(features).argmax(1) == labels).float().mean())


def linear_probe(train: torch.Tensor, train_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
                 test: torch.Tensor, test_labels: torch.Tensor, weight_decays: Sequence[float],
                 iterations: int = 200) -> Dict[str, object]:
    """Multinomial logistic regression on standardised frozen features (full-batch L-BFGS). The L2
    strength is the one with the best validation accuracy; the test split is scored once, with it."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True) + 1e-6
    train, val, test = (train - mean) / std, (val - mean) / std, (test - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    val_accuracy = {}
    heads = {}
    for weight_decay in weight_decays:
        with torch.enable_grad():
            heads[weight_decay] = _fit_linear(train, train_labels, num_classes, weight_decay, iterations)
        val_accuracy[weight_decay] = _accuracy(heads[weight_decay], val, val_labels)
    best = max(weight_decays, key=lambda wd: (val_accuracy[wd], -wd))
    return {"test": _accuracy(heads[best], test, test_labels), "val": val_accuracy[best], "weight_decay": best,
            "val_by_weight_decay": {str(k): v for k, v in val_accuracy.items()}}
