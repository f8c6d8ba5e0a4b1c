"""timm's families (its model modules), which of them qualify for SparK, and which members to try.

A family qualifies when a member exposes, through ``feature_info``, four feature levels whose strides
double (4, 8, 16, 32 for most CNNs). Members are ranked by parameter count, counted on the meta
device (no memory, no initialisation), so the smallest ones are tried first.
"""
import logging
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from sparkmim.utils.errors import describe_error

logger = logging.getLogger(__name__)

# Families built around attention over the tokens of the whole map (or of a window of it), so that
# masked positions would take part in the visible tokens' attention. They are counted apart from the
# convolutional families (SparK's sparse convolution has no counterpart for attention), also when a
# member works. Families that mix convolutions with attention only in some members (fastvit,
# metaformer) count as convolutional.
ATTENTION_FAMILIES: Dict[str, str] = {
    "byoanet": "bottleneck / halo / lambda self-attention", "coat": "factorised self-attention",
    "davit": "window and channel self-attention", "edgenext": "cross-covariance attention over all positions",
    "efficientformer": "self-attention in the last stage", "efficientformer_v2": "self-attention in the last stages",
    "efficientvit_mit": "multi-scale linear attention", "efficientvit_msra": "cascaded group self-attention",
    "gcvit": "global context self-attention", "hiera": "mask-unit self-attention",
    "hieradet_sam2": "mask-unit self-attention", "levit": "self-attention", "maxxvit": "block and grid self-attention",
    "mobilevit": "transformer blocks on unfolded patches", "mvitv2": "pooling self-attention",
    "nextvit": "efficient multi-head self-attention", "pvt_v2": "spatial-reduction self-attention",
    "swin_transformer": "shifted-window self-attention", "swin_transformer_v2": "shifted-window self-attention",
    "swin_transformer_v2_cr": "shifted-window self-attention", "tiny_vit": "window self-attention",
    "twins": "locally-grouped and global self-attention", "iformer": "self-attention in the last stages",
    "lowformer": "lowtention self-attention",
    "cpubone": "self-attention in the last stage", "csatv2": "self-attention on DCT coefficients",
    "swiftformer": "additive attention",
}


@dataclass
class Family:
    """One timm module: its qualifying members, smallest first, with their sizes in millions of parameters."""
    module: str
    members: List[str] = field(default_factory=list)
    params_m: Dict[str, float] = field(default_factory=dict)
    reason: Optional[str] = None  # why no member qualifies

    @property
    def qualifies(self) -> bool:
        return bool(self.members)

    @property
    def kind(self) -> str:
        return "attention" if self.module in ATTENTION_FAMILIES else "convolutional"


def _strides(name: str) -> Tuple[List[int], float]:
    """The feature strides and the size (millions of parameters) of ``name`` built as a SparK encoder
    would be, on the meta device."""
    from sparkmim.sparse.encoder import create_timm_encoder

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_timm_encoder(name)
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ValueError("no feature_info")
    dicts = info.get_dicts() if hasattr(info, "get_dicts") else [dict(d) for d in info]
    return [int(d["reduction"]) for d in dicts], sum(p.numel() for p in model.parameters()) / 1e6


def qualifies(strides: Sequence[int]) -> bool:
    last = list(strides)[-4:]
    return len(last) == 4 and all(b == 2 * a for a, b in zip(last, last[1:]))


def survey_family(module: str) -> Family:
    """Rank the members of ``module`` that qualify; a family without any records why (first member's)."""
    import timm

    family, first_reason = Family(module), None
    for name in timm.list_models(module=module):
        try:
            strides, params = _strides(name)
        except Exception as error:  # a member that cannot even be built on the meta device
            first_reason = first_reason or f"{name}: {describe_error(error, limit=120)}"
            continue
        if qualifies(strides):
            family.members.append(name)
            family.params_m[name] = round(params, 2)
        else:
            first_reason = first_reason or f"strides {strides}"
    family.members.sort(key=lambda member: (family.params_m[member], member))
    if not family.members:
        family.reason = first_reason or "no models"
    return family


def timm_modules(only: Optional[Sequence[str]] = None) -> List[str]:
    """timm's model modules (all of them, or the ``only`` ones, which must exist)."""
    import timm

    modules = sorted(timm.list_modules())
    if only:
        unknown = sorted(set(only) - set(modules))
        if unknown:
            raise ValueError(f"unknown timm module(s) {', '.join(unknown)}; known: {', '.join(modules)}")
        return [module for module in modules if module in only]
    return modules
