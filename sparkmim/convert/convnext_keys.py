"""ConvNeXt key names: facebookresearch/ConvNeXt (and the SparK reference) <-> timm, and torchvision -> timm,
as key tables.

Every key must match one rule; anything else is reported, never guessed."""
import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from .key_rules import KeyTable, Rename, keep, name_rule, to_vector
from .report import ConversionReport


def grn_to_fb(value: torch.Tensor) -> torch.Tensor:
    return value.reshape(1, 1, 1, -1)  # facebookresearch stores GRN parameters as (1, 1, 1, C)


# (facebookresearch name, timm name); the first match wins, so the stem comes before the other downsamplings
NAMES = (
    ("downsample_layers.0.{i}.{p}", "stem.{i}.{p}"),
    ("downsample_layers.{s}.{i}.{p}", "stages.{s}.downsample.{i}.{p}"),
    ("stages.{s}.{b}.dwconv.{p}", "stages.{s}.blocks.{b}.conv_dw.{p}"),
    ("stages.{s}.{b}.norm.{p}", "stages.{s}.blocks.{b}.norm.{p}"),
    ("stages.{s}.{b}.pwconv{n}.{p}", "stages.{s}.blocks.{b}.mlp.fc{n}.{p}"),
    ("stages.{s}.{b}.gamma", "stages.{s}.blocks.{b}.gamma"),
    ("stages.{s}.{b}.grn.gamma", "stages.{s}.blocks.{b}.mlp.grn.weight"),
    ("stages.{s}.{b}.grn.beta", "stages.{s}.blocks.{b}.mlp.grn.bias"),
    ("norm.{p}", "head.norm.{p}"),
    ("head.{p}", "head.fc.{p}"),
)

FB_TO_TIMM = KeyTable("ConvNeXt facebookresearch -> timm", renames=tuple(
    name_rule(fb, timm_name, to_vector if ".grn." in fb else keep) for fb, timm_name in NAMES
) + (name_rule("fc.{p}", "head.fc.{p}"),))  # the SparK reference names the classifier ``fc``

TIMM_TO_FB = KeyTable("ConvNeXt timm -> facebookresearch", renames=tuple(
    name_rule(timm_name, fb, grn_to_fb if ".grn." in fb else keep) for fb, timm_name in NAMES))


def convnext_fb_to_timm(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """facebookresearch/ConvNeXt(-V2) names -> timm ConvNeXt names (the SparK reference's ``fc`` head
    is accepted as ``head``)."""
    return FB_TO_TIMM.convert(state_dict)


def convnext_timm_to_fb(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """timm ConvNeXt names -> facebookresearch/ConvNeXt names."""
    return TIMM_TO_FB.convert(state_dict)


def is_fb_convnext(keys) -> bool:
    return any(k.startswith("downsample_layers.") for k in keys)


# --- torchvision ConvNeXt ---------------------------------------------------------------------

def _tv_block(module: str, field_group: bool = True):
    """torchvision numbers ``features.<i>``: odd i = the blocks of stage (i-1)/2."""
    def target(match) -> Optional[str]:
        index = int(match[1])
        suffix = f".{match[3]}" if field_group else ""
        return f"stages.{(index - 1) // 2}.blocks.{match[2]}.{module}{suffix}" if index % 2 else None
    return target


def _tv_downsample(match) -> Optional[str]:
    """even i > 0 = the downsampling (LayerNorm, conv) in front of stage i/2."""
    index = int(match[1])
    return None if index % 2 or index == 0 else f"stages.{index // 2}.downsample.{match[2]}.{match[3]}"


TORCHVISION_CONVNEXT_TO_TIMM = KeyTable("torchvision ConvNeXt -> timm", renames=(
    Rename(r"features\.0\.([01])\.(weight|bias)", r"stem.\1.\2"),
    Rename(r"features\.(\d+)\.(\d+)\.block\.0\.(weight|bias)", _tv_block("conv_dw")),
    Rename(r"features\.(\d+)\.(\d+)\.block\.2\.(weight|bias)", _tv_block("norm")),
    Rename(r"features\.(\d+)\.(\d+)\.block\.3\.(weight|bias)", _tv_block("mlp.fc1")),
    Rename(r"features\.(\d+)\.(\d+)\.block\.5\.(weight|bias)", _tv_block("mlp.fc2")),
    Rename(r"features\.(\d+)\.(\d+)\.layer_scale", _tv_block("gamma", field_group=False), to_vector),
    Rename(r"features\.(\d+)\.([01])\.(weight|bias)", _tv_downsample),
    Rename(r"classifier\.0\.(weight|bias)", r"head.norm.\1"),
    Rename(r"classifier\.2\.(weight|bias)", r"head.fc.\1"),
))


def is_torchvision_convnext(keys) -> bool:
    return any(re.fullmatch(r"features\.\d+\.\d+\.block\.0\.weight", k) for k in keys)


def torchvision_convnext_to_timm(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """torchvision's ConvNeXt state dict in timm names."""
    return TORCHVISION_CONVNEXT_TO_TIMM.convert(state)
