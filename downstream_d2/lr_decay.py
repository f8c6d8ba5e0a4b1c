"""Layer-wise learning-rate decay for ResNet-based Detectron2 models (pure; no Detectron2 import).

A pre-trained backbone should move less than the freshly initialised heads, and its early layers
(generic features) less than its late ones. Parameters are grouped into layer ids and get the factor
``decay ** (N + 1 - layer_id)``:

=================================  ==========================================
stem                               0
res2, res3                         1, 2
res4, blocks in threes             3, 4, ... (block ``b`` -> ``3 + b // 3``)
res5                               N = 3 + ceil(res4 blocks / 3)
everything else (FPN, RPN, heads)  N + 1 (factor 1)
=================================  ==========================================

For ResNet-50 (6 res4 blocks) N is 5, for ResNet-101 (23) 11, for ResNet-152 (36) 15: the rule of
the reference fine-tuning for R50/R101, applied the same way to any depth.
"""
import math
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

STEM = "stem"
RES_STAGES = {"res2": 2, "res3": 3, "res4": 4, "res5": 5}


def _stage_and_block(param_name: str) -> Optional[Tuple[str, int]]:
    """('stem', 0) or ('resK', block) for a backbone parameter name; None for anything else.

    Looks for a ``stem`` segment or a ``resK`` segment followed by a numeric block index, so it works
    for FPN backbones (``backbone.bottom_up.res4.7.conv2.weight``) and C4 heads
    (``roi_heads.res5.0.conv1.weight``) alike."""
    parts = param_name.split(".")
    for index, part in enumerate(parts):
        if part == STEM:
            return STEM, 0
        if part in RES_STAGES and index + 1 < len(parts) and parts[index + 1].isdigit():
            return part, int(parts[index + 1])
    return None


def count_res4_blocks(param_names: Iterable[str]) -> int:
    """Number of res4 blocks present among ``param_names`` (the depth-dependent part of the rule)."""
    blocks = {found[1] for found in map(_stage_and_block, param_names) if found and found[0] == "res4"}
    if not blocks:
        raise ValueError("no 'res4.<block>' parameters found: layer-wise lr decay needs a ResNet backbone")
    return max(blocks) + 1


@dataclass(frozen=True)
class ResNetLayerDecay:
    """Maps a parameter name to its lr factor; pass an instance as ``lr_factor_func``."""

    res4_blocks: int
    decay: float

    def __post_init__(self) -> None:
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"SOLVER.LR_DECAY must be in (0, 1], got {self.decay} (1.0 means no decay)")
        if self.res4_blocks < 1:
            raise ValueError(f"res4_blocks must be positive, got {self.res4_blocks}")

    @classmethod
    def from_param_names(cls, param_names: Iterable[str], decay: float) -> "ResNetLayerDecay":
        return cls(res4_blocks=count_res4_blocks(param_names), decay=decay)

    @property
    def num_layers(self) -> int:
        """N: the layer id of res5 (the heads are N + 1)."""
        return 3 + math.ceil(self.res4_blocks / 3)

    def layer_id(self, param_name: str) -> int:
        found = _stage_and_block(param_name)
        if found is None:
            return self.num_layers + 1
        stage, block = found
        if stage == STEM:
            return 0
        if stage == "res2":
            return 1
        if stage == "res3":
            return 2
        if stage == "res4":
            return 3 + block // 3
        return self.num_layers

    def __call__(self, param_name: str) -> float:
        return self.decay ** (self.num_layers + 1 - self.layer_id(param_name))
