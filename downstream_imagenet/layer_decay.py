"""Layer-wise learning-rate decay for fine-tuning any timm model.

Each parameter gets a layer id from 0 (stem) to N + 1 (classifier) and an lr scale of
``decay ** (N + 1 - layer_id)``: layers near the input move least, the new classifier moves at the
full rate. The grouping follows the SparK reference fine-tuning code (expressed here on timm
parameter names), because the paper's fine-tuning numbers were obtained with it:

* ResNet: stem -> 0; ``layer1`` -> 1; ``layer2`` blocks in groups of b2 and ``layer3`` blocks in
  groups of b3 after it; ``layer4`` -> N = 2 + ceil(L2 / b2) + ceil(L3 / b3); ``fc`` -> N + 1.
* ConvNeXt (N = 12 when the third stage has more than 9 blocks, else 6): stem -> 0; stage 0 -> 1;
  stage 1 and its downsample -> 2; the downsample of stage 2 -> 3; block j of stage 2 -> 3 + j // 3;
  stage 3 and its downsample -> N; the head (final norm and classifier) -> N + 1.

timm's own grouping numbers ResNets and ConvNeXts differently, so for those two families the paper's
table above is the default (``grouping="auto"``). Every other model is grouped by timm itself, from the
model's ``group_matcher``: ``"stages"`` (its coarse groups: stem, one group per stage, head; about six
layers, the span the paper's recipes were tuned for) or ``"blocks"`` (its fine groups, exactly as
timm's ``param_groups_layer_decay`` numbers them). A model without a ``group_matcher`` falls back to
timm's ``auto_group_layers``.
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


GROUPINGS = ("auto", "paper", "stages", "blocks")


class LayerDecayError(UserError, ValueError):
    """Layer-wise decay was asked with a grouping the model does not have."""


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


def paper_assigner(model: nn.Module) -> Optional[LayerAssigner]:
    """The paper's assigner for ``model``'s family, or None when the model is no ResNet or ConvNeXt."""
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import ResNet

    if isinstance(model, ResNet):
        return resnet_assigner(model)
    if isinstance(model, ConvNeXt):
        return convnext_assigner(model)
    return None


def timm_layer_map(model: nn.Module, coarse: bool) -> Dict[str, int]:
    """Parameter name -> layer index as timm numbers it (the classifier in the last layer)."""
    from timm.models import group_parameters
    from timm.optim import auto_group_layers

    if not hasattr(model, "group_matcher"):
        logger.info("%s has no group_matcher: layers grouped by timm's auto_group_layers", type(model).__name__)
        return auto_group_layers(model)
    try:
        return group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
    except (NotImplementedError, AssertionError):  # e.g. RDNet has fine groups only (it asserts)
        logger.info("%s has no stage grouping: using its block grouping", type(model).__name__)
        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


def timm_assigner(model: nn.Module, coarse: bool) -> LayerAssigner:
    """Layers from timm's grouping; the scale ``decay ** (last - layer)`` is the one timm's
    ``param_groups_layer_decay`` gives."""
    layer_map = timm_layer_map(model, coarse)
    last = max(layer_map.values())
    if last == 0:
        raise LayerDecayError(
            f"timm puts every parameter of {type(model).__name__} in one layer (no group_matcher and no "
            f"classifier name), so layer-wise lr decay cannot be applied; pass --layer-decay 1.0")
    return LayerAssigner(num_layers=last - 1, layer_of=lambda name: layer_map.get(name, last))


def layer_assigner(model: nn.Module, grouping: str = "auto") -> LayerAssigner:
    """The assigner for ``model``: ``auto`` = the paper's table for ResNet/ConvNeXt, else timm's stages."""
    if grouping not in GROUPINGS:
        raise LayerDecayError(f"layer grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    if grouping in ("auto", "paper"):
        assigner = paper_assigner(model)
        if assigner is not None:
            return assigner
        if grouping == "paper":
            raise LayerDecayError(
                f"the paper's layer grouping is defined for timm ResNet and ConvNeXt models, not "
                f"{type(model).__name__}; use --layer-grouping stages or blocks (timm's grouping)")
    return timm_assigner(model, coarse=grouping != "blocks")


def takes_no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and 1-D parameters (norm affine, ConvNeXt layer scale 'gamma') take no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or name.endswith("gamma")


def param_groups(model: nn.Module, layer_decay: float, grouping: str = "auto") -> List[dict]:
    """Optimizer groups with ``lr_scale`` and ``weight_decay_scale`` for :func:`apply_lr_wd`.

    ``layer_decay`` of 1 (or more) disables the decay; below 1 the layers come from
    :func:`layer_assigner`. Frozen parameters are left out."""
    assigner = layer_assigner(model, grouping) if layer_decay < 1.0 else None
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


def lr_scales(model: nn.Module, layer_decay: float, grouping: str = "auto") -> Dict[str, float]:
    """Parameter name -> lr scale, for inspection and tests."""
    return {name: group["lr_scale"] for group in param_groups(model, layer_decay, grouping)
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
