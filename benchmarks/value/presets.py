"""Budgets of the value benchmark. Every setting is the same for SparK and scratch; only the initial weights differ.

The encoder is :mod:`sparkmim.models.small_resnet` (total stride 16) at 64 px, so SparK's mask grid is 4x4
patches of 16 px (7 px of a 28-px Fashion-MNIST image); see docs/value.md for why not a stride-32 timm CNN."""
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Optional, Tuple

from .finetune import FinetuneRecipe


@dataclass(frozen=True)
class Preset:
    name: str
    model: str                                  # package.module:factory (or a timm name)
    input_size: int = 64
    decoder_width: int = 96
    mask_ratio: float = 0.6
    pretrain_epochs: int = 3
    pretrain_batch: int = 128
    pretrain_lr: float = 1e-3                   # peak LAMB lr (explicit: the paper's base-lr scaling is for bs 4096)
    pretrain_warmup_epochs: float = 0.3
    pretrain_images: Optional[int] = None       # None = every training image
    pretrain_workers: int = 2
    amp: str = "off"
    val_fraction: float = 0.1                   # carved from the training set, class-balanced
    fractions: Tuple[float, ...] = (0.01, 0.1)
    seeds: Tuple[int, ...] = (0, 1, 2)
    finetune_epochs: Dict[float, int] = field(default_factory=lambda: {0.01: 40, 0.1: 8})
    finetune_batch: int = 64
    finetune_lrs: Tuple[float, ...] = (2e-3,)   # more than one: chosen on validation with the first seed
    finetune_min_steps: int = 100
    probe_weight_decays: Tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    knn_k: int = 20
    smoke_data: Tuple[int, int] = (400, 200)    # generated train/test images when --smoke has no --data

    def recipe(self, fraction: float, lr: float) -> FinetuneRecipe:
        return FinetuneRecipe(epochs=self.finetune_epochs[fraction], batch=self.finetune_batch, lr=lr,
                              min_steps=self.finetune_min_steps)

    def to_dict(self) -> Dict[str, Any]:
        settings = asdict(self)
        settings["finetune_epochs"] = {str(k): v for k, v in self.finetune_epochs.items()}
        return settings


PRESETS: Dict[str, Preset] = {
    # 2 CPU cores, at most 60 minutes: 0.7M-parameter encoder, 3 pre-training epochs over all 60k images
    "cpu": Preset(name="cpu", model="sparkmim.models:small_resnet_w24"),
    # one H100-class GPU, about 8 minutes: 2.8M parameters, longer pre-training, 100% labels, lr search
    "gpu": Preset(name="gpu", model="sparkmim.models:small_resnet_w32", decoder_width=128, pretrain_epochs=15,
                  pretrain_batch=512, pretrain_lr=2e-3, pretrain_warmup_epochs=1.0, pretrain_workers=12, amp="bf16",
                  fractions=(0.01, 0.1, 1.0), finetune_epochs={0.01: 100, 0.1: 20, 1.0: 8}, finetune_batch=256,
                  finetune_lrs=(1e-3, 3e-3)),
    # every stage in seconds on generated data (the tests)
    "smoke": Preset(name="smoke", model="sparkmim.models:small_resnet_w8", decoder_width=32, pretrain_epochs=1,
                    pretrain_batch=32, pretrain_warmup_epochs=0.5, pretrain_workers=0, val_fraction=0.2,
                    fractions=(0.1, 0.5), finetune_epochs={0.1: 2, 0.5: 1}, finetune_batch=32, finetune_min_steps=4,
                    probe_weight_decays=(1e-3, 1e-1)),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
