"""Extract timm-named encoder weights from any checkpoint layout the project meets.

Handled: our full pre-training checkpoint (``encoder.model.*``), our encoder-only checkpoint and the
reference's ``*_1kpretrained_timm_style.pth`` (timm names), the reference's
``*_1kpretrained_official_style.pth`` (facebookresearch ConvNeXt names) and
``*_withdecoder_1kpretrained_spark_style.pth`` (``sparse_encoder.sp_cnn.*``), each possibly under
'module'/'model'/'state_dict' and with a DDP 'module.' prefix."""
from typing import Any, Dict, Tuple

import torch

from ..utils.checkpoint import strip_prefix, unwrap_state_dict
from .convnext_keys import convnext_fb_to_timm, is_fb_convnext, is_torchvision_convnext, torchvision_convnext_to_timm
from .reference import (REFERENCE_ENCODER_PREFIX, SPARKMIM_ENCODER_PREFIX, is_reference_spark,
                        reference_encoder_to_timm)
from .report import ConversionReport

# classifier parameters of timm CNNs (and of the reference's ConvNeXt 'fc'), dropped for an encoder
CLASSIFIER_PREFIXES = ("fc.", "head.fc.", "classifier.", "last_linear.", "head.weight", "head.bias")
# the classifier-side norm of timm's ConvNeXt head, after global pooling: no feature map passes through it,
# so pre-training never trains it and the reference's encoders do not have it; a classifier keeps its own
CLASSIFIER_SIDE_NORM_PREFIXES = ("head.norm.",)


def _split_prefix(state: Dict[str, torch.Tensor], prefix: str) -> Tuple[Dict[str, torch.Tensor], list]:
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return kept, [k for k in state if not k.startswith(prefix)]


LINEAR_PROBE_BACKBONE_PREFIX = "backbone."  # spark-finetune --linear-probe: the frozen encoder, then its head


def _is_linear_probe(obj: Any, state: Dict[str, torch.Tensor]) -> bool:
    """A spark-finetune --linear-probe checkpoint: its config says so and its encoder sits under ``backbone.``."""
    config = obj.get("config") if isinstance(obj, dict) else None
    return (isinstance(config, dict) and bool(config.get("linear_probe"))
            and any(key.startswith(LINEAR_PROBE_BACKBONE_PREFIX) for key in state))


def load_encoder_state_dict(obj: Any) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Return (timm-named encoder state dict without classifier, report of converted/dropped keys)."""
    state = strip_prefix(unwrap_state_dict(obj), "module.")
    report = ConversionReport()
    if any(k.startswith(SPARKMIM_ENCODER_PREFIX) for k in state):
        state, dropped = _split_prefix(state, SPARKMIM_ENCODER_PREFIX)
        report.dropped.extend(dropped)
        report.notes.append("sparkmim full pre-training checkpoint")
    elif _is_linear_probe(obj, state):
        state, dropped = _split_prefix(state, LINEAR_PROBE_BACKBONE_PREFIX)
        report.dropped.extend(dropped)  # the probe's own head
        report.notes.append("spark-finetune linear probe (its frozen backbone)")
    elif is_reference_spark(state):
        encoder, dropped = _split_prefix(state, REFERENCE_ENCODER_PREFIX)
        report.dropped.extend(dropped)
        state, _ = reference_encoder_to_timm(encoder)
        report.notes.append("SparK reference full checkpoint (with decoder)")
    elif is_fb_convnext(state):
        state, _ = convnext_fb_to_timm(state)
        report.notes.append("facebookresearch ConvNeXt names (reference official_style)")
    elif is_torchvision_convnext(state):
        state, _ = torchvision_convnext_to_timm(state)
        report.notes.append("torchvision ConvNeXt names")
    else:
        report.notes.append("timm names")
    encoder = {}
    for key, value in state.items():
        if key.startswith(CLASSIFIER_PREFIXES):
            report.dropped.append(key)
        else:
            encoder[key] = value
            report.converted.append(key)
    return encoder, report
