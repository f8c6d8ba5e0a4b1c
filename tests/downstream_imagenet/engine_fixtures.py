"""A tiny spark-finetune Trainer, its batches and a loss that diverges on cue: shared by the epoch-loop
tests and their torchrun worker."""
import timm
import torch
from torch import nn

from sparkmim.downstream_imagenet.data import Batch
from sparkmim.downstream_imagenet.engine import Trainer
from sparkmim.utils.schedule import Schedule

STEPS = 6


class NanAt(nn.Module):
    """Cross-entropy that turns NaN at one call (a divergence); ``call=None`` never does."""

    def __init__(self, call) -> None:
        super().__init__()
        self.call, self.calls = call, 0

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, targets)
        self.calls += 1
        return loss * float("nan") if self.calls - 1 == self.call else loss


def tiny_trainer(log_interval: int, criterion: nn.Module) -> Trainer:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    return Trainer(model=model, module=model, optimizer=optimizer, criterion=criterion,
                   schedule=Schedule(total_steps=STEPS, warmup_steps=1, peak_lr=0.01, weight_decay=0.0),
                   device=torch.device("cpu"), log_interval=log_interval, progress=False)


def tiny_batches(count: int):
    generator = torch.Generator().manual_seed(0)
    return [Batch(torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 0]), 0)
            for _ in range(count)]
