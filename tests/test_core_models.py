"""The models the paper uses (and their smaller siblings) work out of the box, and the reference
release layout of each imports into them key for key."""
import re

import pytest
import torch

from sparkmim import build_spark
from sparkmim.convert import convnext_timm_to_fb, load_state_dict_checked, spark_state_from_reference
from sparkmim.convert.reference import build_kwargs_from_reference_config

PAPER_MODELS = ["resnet50", "resnet101", "resnet152", "resnet200", "convnext_small", "convnext_base", "convnext_large"]
OTHER_MODELS = ["resnet18", "resnet34", "convnext_tiny", "convnextv2_tiny"]

_DECODER_TO_REFERENCE = [
    (r"decoder\.stages\.(\d+)\.upsample\.", r"dense_decoder.dec.\1.up_sample."),
    (r"decoder\.stages\.(\d+)\.conv1\.", r"dense_decoder.dec.\1.conv.0."),
    (r"decoder\.stages\.(\d+)\.bn1\.", r"dense_decoder.dec.\1.conv.1."),
    (r"decoder\.stages\.(\d+)\.conv2\.", r"dense_decoder.dec.\1.conv.3."),
    (r"decoder\.stages\.(\d+)\.bn2\.", r"dense_decoder.dec.\1.conv.4."),
    (r"decoder\.proj\.", r"dense_decoder.proj."),
]


def to_reference_release(spark, arch: str) -> dict:
    """Write a SparK state dict in the reference's release layout (what its training saved)."""
    state = spark.state_dict()
    encoder = {k[len("encoder.model."):]: v for k, v in state.items() if k.startswith("encoder.model.")}
    encoder = {k: v for k, v in encoder.items() if not k.startswith("head.")}  # the reference encoder has no head
    if arch.startswith("convnext"):
        encoder, _ = convnext_timm_to_fb(encoder)
    module = {f"sparse_encoder.sp_cnn.{k}": v for k, v in encoder.items()}
    for key, value in state.items():
        if key.startswith("encoder."):
            continue
        for pattern, target in _DECODER_TO_REFERENCE:
            key = re.sub(pattern, target, key)
        module[key] = value
    module.update(imn_m=torch.zeros(1, 3, 1, 1), imn_s=torch.ones(1, 3, 1, 1), norm_black=torch.zeros(1, 3, 224, 224))
    module["config"] = {"mask_ratio": spark.mask_ratio, "densify_norm_str": spark.densify_norm, "sbn": False,
                        "hierarchy": 4, "sparse_encoder.input_size": 224, "dense_decoder.width": spark.decoder.width}
    return {"module": module, "arch": arch, "input_size": 224, "epoch": 1599, "is_pretrain": True}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("arch", PAPER_MODELS + OTHER_MODELS)
def test_model_builds_trains_and_imports_reference_layout(arch):
    torch.manual_seed(0)
    spark = build_spark(arch)  # the build-time probe checks sparse semantics layer by layer
    expected_norm = "ln" if arch.startswith("convnext") else "bn"
    assert spark.densify_norm == expected_norm
    out = spark(torch.randn(1, 3, 64, 64))
    out.loss.backward()
    assert torch.isfinite(out.loss)

    release = to_reference_release(spark, arch)
    state, report, config = spark_state_from_reference(release)
    assert set(report.dropped) == {"imn_m", "imn_s", "norm_black", "config"}
    imported = build_spark(release["arch"], **build_kwargs_from_reference_config(config))
    load_state_dict_checked(imported, state, f"{arch} reference release",
                            allowed_missing=["encoder.model." + k for k in imported.encoder.unused_state_keys])
    ours = spark.state_dict()
    for key, value in imported.state_dict().items():
        if key in state:
            assert torch.equal(value, ours[key]), key
