"""Import the SparK reference implementation's release files into sparkmim models.

The reference's full checkpoint (``*_withdecoder_1kpretrained_spark_style.pth``) holds
``sparse_encoder.sp_cnn.*`` (timm names for ResNet, facebookresearch names for ConvNeXt),
``densify_norms.*``, ``densify_projs.*``, ``mask_tokens.*``, ``dense_decoder.*``, unused buffers
``imn_m``/``imn_s``/``norm_black`` and a 'config' dict."""
from typing import Any, Dict, Mapping, Tuple

import torch

from .convnext_keys import convnext_fb_to_timm, is_fb_convnext
from .key_rules import Drop, KeyTable, Rename
from .report import ConversionReport

REFERENCE_ENCODER_PREFIX = "sparse_encoder.sp_cnn."
REFERENCE_UNUSED_BUFFERS = ("imn_m", "imn_s", "norm_black")
SPARKMIM_ENCODER_PREFIX = "encoder.model."

_STAGE = r"dense_decoder\.dec\.(\d+)"
# the reference model minus its encoder -> sparkmim SparK names
REFERENCE_DECODER = KeyTable("SparK reference -> sparkmim decoder", renames=(
    Rename(_STAGE + r"\.up_sample\.(.+)", r"decoder.stages.\1.upsample.\2"),
    Rename(_STAGE + r"\.conv\.0\.(.+)", r"decoder.stages.\1.conv1.\2"),
    Rename(_STAGE + r"\.conv\.1\.(.+)", r"decoder.stages.\1.bn1.\2"),
    Rename(_STAGE + r"\.conv\.3\.(.+)", r"decoder.stages.\1.conv2.\2"),
    Rename(_STAGE + r"\.conv\.4\.(.+)", r"decoder.stages.\1.bn2.\2"),
    Rename(r"dense_decoder\.proj\.(.+)", r"decoder.proj.\1"),
    Rename(r"(densify_norms|densify_projs)\.(\d+)\.(.+)", r"\1.\2.\3"),
    Rename(r"mask_tokens\.(\d+)", r"mask_tokens.\1"),
), drops=(Drop("|".join(REFERENCE_UNUSED_BUFFERS), "unused normalisation buffers of the reference model"),
          Drop("config", "the reference's settings (read separately)")))


def reference_module_state(obj: Any) -> Mapping[str, Any]:
    """The reference release's model dict (under 'module' in release files, or the dict itself)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("module"), Mapping):
        return obj["module"]
    if isinstance(obj, Mapping):
        return obj
    raise ValueError("not a SparK reference checkpoint: expected a dict (with a 'module' entry)")


def is_reference_spark(keys) -> bool:
    return any(k.startswith(REFERENCE_ENCODER_PREFIX) for k in keys)


def reference_encoder_to_timm(encoder_state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """The reference's ``sp_cnn`` weights (prefix removed) in timm names."""
    if is_fb_convnext(encoder_state):
        return convnext_fb_to_timm(encoder_state)
    return dict(encoder_state), ConversionReport(converted=list(encoder_state))


def spark_state_from_reference(obj: Any) -> Tuple[Dict[str, torch.Tensor], ConversionReport, Dict[str, Any]]:
    """Reference full checkpoint -> (sparkmim SparK state dict, report, the reference's config dict)."""
    module_state = reference_module_state(obj)
    config = dict(module_state.get("config") or {})
    report = ConversionReport()
    encoder_part = {k[len(REFERENCE_ENCODER_PREFIX):]: v for k, v in module_state.items()
                    if k.startswith(REFERENCE_ENCODER_PREFIX)}
    if not encoder_part:
        raise ValueError(f"not a SparK reference full checkpoint: no '{REFERENCE_ENCODER_PREFIX}*' keys")
    encoder_timm, encoder_report = reference_encoder_to_timm(encoder_part)
    out = {SPARKMIM_ENCODER_PREFIX + k: v for k, v in encoder_timm.items()}
    report.converted.extend(REFERENCE_ENCODER_PREFIX + k for k in encoder_report.converted)
    rest = {k: v for k, v in module_state.items() if not k.startswith(REFERENCE_ENCODER_PREFIX)}
    decoder, decoder_report = REFERENCE_DECODER.convert(rest)
    out.update(decoder)
    report.converted.extend(decoder_report.converted)
    report.dropped.extend(decoder_report.dropped)
    return out, report, config


def build_kwargs_from_reference_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    """``build_spark`` keyword arguments equivalent to a reference 'config' dict."""
    kwargs: Dict[str, Any] = {}
    if "sparse_encoder.input_size" in config:
        kwargs["input_size"] = int(config["sparse_encoder.input_size"])
    if "mask_ratio" in config:
        kwargs["mask_ratio"] = float(config["mask_ratio"])
    if "dense_decoder.width" in config:
        kwargs["decoder_width"] = int(config["dense_decoder.width"])
    if "densify_norm_str" in config:
        kwargs["densify_norm"] = str(config["densify_norm_str"]).lower()
    return kwargs
