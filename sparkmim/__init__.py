"""sparkmim: SparK (sparse and hierarchical masked modeling) for any timm CNN.

The public API::

    from sparkmim import build_spark
    spark = build_spark("resnet50", input_size=224, mask_ratio=0.6)
    out = spark(images)               # SparKOutput(loss, active, reconstruction, masked_input)
    features = spark.encode(images, out.active)
    encoder_state = spark.encoder.model.state_dict()   # a plain timm state dict

The names are loaded on first use, so that importing the package (as every command's launcher does)
does not import torch: a Ctrl-C in a command's first seconds then lands where the command can answer it.
"""
import importlib
from typing import TYPE_CHECKING, Any, List

__version__ = "0.1.0"

# public name -> the submodule that defines it
_HOMES = {
    "SparK": ".model.spark", "SparKOutput": ".model.spark", "build_spark": ".model.spark",
    "convert_sync_batchnorm": ".model.spark",
    "MaskContext": ".sparse.context", "MaskNotSetError": ".sparse.context",
    "EncoderSpecError": ".sparse.encoder", "SparseEncoder": ".sparse.encoder", "make_sparse_encoder": ".sparse.encoder",
    "UnsupportedLayerError": ".sparse.rules",
}

__all__ = [*_HOMES, "__version__"]

if TYPE_CHECKING:  # the names as type checkers and editors should see them
    from .model.spark import SparK, SparKOutput, build_spark, convert_sync_batchnorm
    from .sparse.context import MaskContext, MaskNotSetError
    from .sparse.encoder import EncoderSpecError, SparseEncoder, make_sparse_encoder
    from .sparse.rules import UnsupportedLayerError


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sparkmim' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(__all__)
