"""sparkmim: SparK (sparse and hierarchical masked modeling) for any timm CNN.

The public API::

    from sparkmim import build_spark
    spark = build_spark("resnet50", input_size=224, mask_ratio=0.6)
    out = spark(images)               # SparKOutput(loss, active, reconstruction, masked_input)
    features = spark.encode(images, out.active)
    encoder_state = spark.encoder.model.state_dict()   # a plain timm state dict
"""
from .model.spark import SparK, SparKOutput, build_spark, convert_sync_batchnorm
from .sparse.context import MaskContext, MaskNotSetError
from .sparse.encoder import EncoderSpecError, SparseEncoder, make_sparse_encoder
from .sparse.rules import UnsupportedLayerError

__version__ = "0.1.0"

__all__ = [
    "SparK", "SparKOutput", "build_spark", "convert_sync_batchnorm", "MaskContext", "MaskNotSetError",
    "EncoderSpecError", "SparseEncoder", "make_sparse_encoder", "UnsupportedLayerError", "__version__",
]
