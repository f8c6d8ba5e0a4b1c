"""ConvNeXt key names: facebookresearch/ConvNeXt (and the SparK reference) <-> timm.

Every key must match one rule; anything else is reported, never guessed."""
import re
from typing import Callable, Dict, List, Mapping, Tuple

import torch

from .report import ConversionReport, fail_on_unmapped

# (facebookresearch pattern, timm pattern); groups are stage/block indices
_FB_TO_TIMM: List[Tuple[str, str]] = [
    (r"downsample_layers\.0\.0\.(weight|bias)", r"stem.0.\1"),
    (r"downsample_layers\.0\.1\.(weight|bias)", r"stem.1.\1"),
    (r"downsample_layers\.([1-9]\d*)\.([01])\.(weight|bias)", r"stages.\1.downsample.\2.\3"),
    (r"stages\.(\d+)\.(\d+)\.dwconv\.(weight|bias)", r"stages.\1.blocks.\2.conv_dw.\3"),
    (r"stages\.(\d+)\.(\d+)\.norm\.(weight|bias)", r"stages.\1.blocks.\2.norm.\3"),
    (r"stages\.(\d+)\.(\d+)\.pwconv([12])\.(weight|bias)", r"stages.\1.blocks.\2.mlp.fc\3.\4"),
    (r"stages\.(\d+)\.(\d+)\.gamma", r"stages.\1.blocks.\2.gamma"),
    (r"stages\.(\d+)\.(\d+)\.grn\.gamma", r"stages.\1.blocks.\2.mlp.grn.weight"),
    (r"stages\.(\d+)\.(\d+)\.grn\.beta", r"stages.\1.blocks.\2.mlp.grn.bias"),
    (r"norm\.(weight|bias)", r"head.norm.\1"),
    (r"head\.(weight|bias)", r"head.fc.\1"),
]

# the reverse direction (timm -> facebookresearch); written out because the forward patterns have groups
_TIMM_TO_FB: List[Tuple[str, str]] = [
    (r"stem\.0\.(weight|bias)", r"downsample_layers.0.0.\1"),
    (r"stem\.1\.(weight|bias)", r"downsample_layers.0.1.\1"),
    (r"stages\.([1-9]\d*)\.downsample\.([01])\.(weight|bias)", r"downsample_layers.\1.\2.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)", r"stages.\1.\2.dwconv.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)", r"stages.\1.\2.norm.\3"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)", r"stages.\1.\2.pwconv\3.\4"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.gamma", r"stages.\1.\2.gamma"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight", r"stages.\1.\2.grn.gamma"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias", r"stages.\1.\2.grn.beta"),
    (r"head\.norm\.(weight|bias)", r"norm.\1"),
    (r"head\.fc\.(weight|bias)", r"head.\1"),
]


def _rename(state_dict: Mapping[str, torch.Tensor], rules: List[Tuple[str, str]], what: str,
            reshape: Callable[[str, torch.Tensor], torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    compiled = [(re.compile(pattern + r"$"), target) for pattern, target in rules]
    out: Dict[str, torch.Tensor] = {}
    report, unmapped = ConversionReport(), []
    for key, value in state_dict.items():
        for pattern, target in compiled:
            match = pattern.match(key)
            if match:
                new_key = match.expand(target)
                out[new_key] = reshape(new_key, value)
                report.converted.append(key)
                break
        else:
            unmapped.append(key)
    fail_on_unmapped(unmapped, what)
    return out, report


def _grn_to_timm(key: str, value: torch.Tensor) -> torch.Tensor:
    return value.reshape(-1) if ".grn." in key else value  # fb stores GRN params as (1, 1, 1, C)


def _grn_to_fb(key: str, value: torch.Tensor) -> torch.Tensor:
    return value.reshape(1, 1, 1, -1) if ".grn." in key else value


def convnext_fb_to_timm(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """facebookresearch/ConvNeXt(-V2) names -> timm ConvNeXt names (the SparK reference's ``fc`` head
    is accepted as ``head``)."""
    renamed = {("head." + k[3:] if k.startswith("fc.") else k): v for k, v in state_dict.items()}
    return _rename(renamed, _FB_TO_TIMM, "ConvNeXt facebookresearch -> timm", _grn_to_timm)


def convnext_timm_to_fb(state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """timm ConvNeXt names -> facebookresearch/ConvNeXt names."""
    return _rename(state_dict, _TIMM_TO_FB, "ConvNeXt timm -> facebookresearch", _grn_to_fb)


def is_fb_convnext(keys) -> bool:
    return any(k.startswith("downsample_layers.") for k in keys)
