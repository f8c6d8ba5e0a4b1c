"""Small CNNs written to timm's feature API, for data sets whose images are too small for a stride-32 network.

They show the protocol a custom encoder follows to be pre-trained by SparK: ``feature_info`` (channels and
strides of four feature maps whose strides double), ``forward_intermediates(x, indices, intermediates_only)``
and the usual ``forward_features`` / ``forward_head`` / ``reset_classifier``. Any such module can be given to
:func:`sparkmim.build_spark`, and to ``spark-pretrain --model package.module:factory``.
"""
from .small_resnet import SmallResNet, small_resnet, small_resnet_w8, small_resnet_w24, small_resnet_w32

__all__ = ["SmallResNet", "small_resnet", "small_resnet_w8", "small_resnet_w24", "small_resnet_w32"]
