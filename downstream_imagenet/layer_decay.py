"""Layer-wise learning-rate decay for fine-tuning timm ResNets and ConvNeXts.

Each parameter gets a layer id from 0 (stem) to N + 1 (classifier) and an lr scale of
``decay ** (N + 1 - layer_id)``: layers near the input move least, the new classifier moves at the
full rate. The grouping follows the SparK reference fine-tuning code (expressed here on timm
parameter names), because the paper's fine-tuning numbers were obtained with it:

* ResNet: stem -> 0; ``layer1`` -> 1; ``layer2`` blocks in groups of b2 and ``layer3`` blocks in
  groups of b3 after it; ``layer4`` -> N = 2 + ceil(L2 / b2) + ceil(L3 / b3); ``fc`` -> N + 1.
* ConvNeXt (N = 12 when the third stage has more than 9 blocks, else 6): stem -> 0; stage 0 -> 1;
  stage 1 and its downsample -> 2; the downsample of stage 2 -> 3; block j of stage 2 -> 3 + j // 3;
  stage 3 and its downsample -> N; the head (final norm and classifier) -> N + 1.

timm's own ``param_groups_layer_decay`` groups ResNets and ConvNeXts differently (by stage, with
another numbering), so it is not used here.
"""
import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from sparkmim.utils.errors import UserError

logger = logging.getLogger(__name__)

# (blocks in layer2, blocks in layer3) -> (b2, b3), from the reference code
_RESNET_BLOCK_GROUPS: Dict[Tuple[int, int], Tuple[int, int]] = {
    (4, 6): (2, 3),    # ResNet-50 (and -34)
    (4, 23): (2, 3),   # ResNet-101
    (8, 36): (4, 4),   # ResNet-152
    (24, 36): (4, 4),  # ResNet-200
    (30, 48): (5, 6),  # ResNet-269
}


class LayerDecayError(UserError, ValueError):
    """Layer-wise decay was asked for a model whose layer grouping is not defined."""


@dataclass(frozen=True)
class LayerAssigner:
    """Maps a parameter name to its layer id; ``num_layers`` is N (the classifier is N + 1)."""

    num_layers: int
    layer_of: Callable[[str], int]

    def scale(self, name: str, decay: float) -> float:
        return decay ** (self.num_layers + 1 - self.layer_of(name))


def resnet_block_groups(blocks_layer2: int, blocks_layer3: int) -> Tuple[int, int]:
    """(b2, b3) for a ResNet; the reference depths are exact, other depths use (2, 3) when layer2
    has at most 4 blocks (ResNet-18/26/34) and (4, 4) otherwise."""
    known = _RESNET_BLOCK_GROUPS.get((blocks_layer2, blocks_layer3))
    if known is not None:
        return known
    return (2, 3) if blocks_layer2 <= 4 else (4, 4)


def resnet_assigner(model: nn.Module) -> LayerAssigner:
    blocks2, blocks3 = len(model.layer2), len(model.layer3)
    group2, group3 = resnet_block_groups(blocks2, blocks3)
    groups2, groups3 = math.ceil(blocks2 / group2), math.ceil(blocks3 / group3)
    last = 2 + groups2 + groups3

    def layer_of(name: str) -> int:
        parts = name.split(".")
        if parts[0] in ("layer1", "layer2", "layer3", "layer4"):
            stage, block = int(parts[0][5:]), int(parts[1])
            if stage == 1:
                return 1
            if stage == 2:
                return 2 + block // group2
            if stage == 3:
                return 2 + groups2 + block // group3
            return last
        if parts[0] == "fc":
            return last + 1
        return 0  # stem: conv1 / bn1 (or the deep stem of the 'd' variants)

    return LayerAssigner(num_layers=last, layer_of=layer_of)


def convnext_assigner(model: nn.Module) -> LayerAssigner:
    last = 12 if len(model.stages[2].blocks) > 9 else 6

    def layer_of(name: str) -> int:
        parts = name.split(".")
        if parts[0] == "stem":
            return 0
        if parts[0] == "stages":
            stage = int(parts[1])
            if stage == 0:
                return 1
            if stage == 1:
                return 2
            if stage == 2:
                if parts[2] == "downsample":
                    return 3
                return 3 + int(parts[3]) // 3
            return last
        return last + 1  # norm_pre (identity in ConvNeXt), head.norm, head.fc

    return LayerAssigner(num_layers=last, layer_of=layer_of)


def layer_assigner(model: nn.Module) -> Optional[LayerAssigner]:
    """The assigner for ``model``'s family, or None when the grouping is not defined for it."""
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import ResNet

    if isinstance(model, ResNet):
        return resnet_assigner(model)
    if isinstance(model, ConvNeXt):
        return convnext_assigner(model)
    return None


def takes_no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and 1-D parameters (norm affine, ConvNeXt layer scale 'gamma') take no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or name.endswith("gamma")


def param_groups(model: nn.Module, layer_decay: float) -> List[dict]:
    """Optimizer groups with ``lr_scale`` and ``weight_decay_scale`` for :func:`apply_lr_wd`.

    ``layer_decay`` of 1 (or more) disables the decay and works for any model; below 1 the model
    must be a ResNet or ConvNeXt. Frozen parameters are left out."""
    assigner = None
    if layer_decay < 1.0:
        assigner = layer_assigner(model)
        if assigner is None:
            raise LayerDecayError(
                f"layer-wise lr decay is defined for timm ResNet and ConvNeXt models, not "
                f"{type(model).__name__}; pass --layer-decay 1.0 to fine-tune it without decay")
    groups: Dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_wd = takes_no_weight_decay(name, param)
        layer_id = assigner.layer_of(name) if assigner is not None else 0
        scale = assigner.scale(name, layer_decay) if assigner is not None else 1.0
        key = f"layer{layer_id}_{'no_decay' if no_wd else 'decay'}"
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "group_name": key, "layer_id": layer_id,
                           "lr_scale": scale, "weight_decay_scale": 0.0 if no_wd else 1.0}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["layer_id"], g["weight_decay_scale"]))


def lr_scales(model: nn.Module, layer_decay: float) -> Dict[str, float]:
    """Parameter name -> lr scale, for inspection and tests."""
    return {name: group["lr_scale"] for group in param_groups(model, layer_decay)
            for name in group["param_names"]}


def describe_groups(groups: List[dict]) -> str:
    """A table of the groups (layer, lr scale, wd scale, size, first and last parameter)."""
    lines = [f"{'group':<22} {'lr scale':>10} {'wd scale':>8} {'params':>7}  names"]
    for group in groups:
        names = group["param_names"]
        span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        lines.append(f"{group['group_name']:<22} {group['lr_scale']:>10.6f} "
                     f"{group['weight_decay_scale']:>8.1f} {len(names):>7}  {span}")
    return "\n".join(lines)
