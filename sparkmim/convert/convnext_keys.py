"""ConvNeXt key names: facebookresearch/ConvNeXt (and the SparK reference) <-> timm, as key tables.

Every key must match one rule; anything else is reported, never guessed."""
from typing import Dict, Mapping, Tuple

import torch

from .key_rules import KeyTable, keep, name_rule, to_vector
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
