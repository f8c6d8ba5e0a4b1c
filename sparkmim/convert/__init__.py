"""Weight converters: pure functions that account for every key (converted, or dropped and reported)."""
from .convnext_keys import convnext_fb_to_timm, convnext_timm_to_fb
from .encoder_weights import CLASSIFIER_PREFIXES, CLASSIFIER_SIDE_NORM_PREFIXES, load_encoder_state_dict
from .loading import load_state_dict_checked
from .reference import build_kwargs_from_reference_config, spark_state_from_reference
from .report import ConversionReport, KeyAccountingError

__all__ = [
    "convnext_fb_to_timm", "convnext_timm_to_fb", "CLASSIFIER_PREFIXES", "CLASSIFIER_SIDE_NORM_PREFIXES",
    "load_encoder_state_dict",
    "load_state_dict_checked", "build_kwargs_from_reference_config", "spark_state_from_reference",
    "ConversionReport", "KeyAccountingError",
]
