"""The reference implementation's recorded outputs (``tests/fixtures/reference/*.pt``) as SparK models.

Each fixture holds a small encoder's settings (``model_cfg``), the reference model's weights, an input,
a mask and what the reference computed from them (loss, features, gradients, running statistics). The
parity tests and ``spark-bench gpu-check`` rebuild the same model here and compare."""
from pathlib import Path
from typing import Any, Dict, Union

import torch

from .loading import load_state_dict_checked
from .reference import build_kwargs_from_reference_config, spark_state_from_reference


def load_reference_case(path: Union[str, Path]) -> Dict[str, Any]:
    """One fixture file (the project's own data: loaded with full unpickling)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def spark_from_reference_case(case: Dict[str, Any]):
    """Build the fixture's encoder as a timm model and import the reference checkpoint into SparK."""
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    from sparkmim.model.spark import SparK
    from sparkmim.sparse.encoder import SparseEncoder

    cfg = case["model_cfg"]
    kwargs = dict(cfg["kwargs"])
    if cfg["family"] == "resnet":
        kwargs["block"] = {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck}[kwargs["block"]]
        model = ResNet(num_classes=0, global_pool="", **kwargs)
    else:
        model = ConvNeXt(num_classes=0, global_pool="", **kwargs)
    state, _, config = spark_state_from_reference(case["state"])
    spark = SparK(SparseEncoder(model), **build_kwargs_from_reference_config(config))
    load_state_dict_checked(spark, state, "reference fixture",
                            allowed_missing=["encoder.model." + k for k in spark.encoder.unused_state_keys])
    return spark
