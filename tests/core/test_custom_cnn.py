"""A custom CNN given as ``package.module:factory`` (timm's feature API, total stride 16) through the core and
spark-pretrain: the same sparse invariants as timm models, and actionable errors for bad paths."""
import copy
import subprocess
import sys

import pytest
import torch

from sparkmim import build_spark
from sparkmim.models import small_resnet_w8
from tests.core_utils import random_mask

MODEL = "sparkmim.models:small_resnet_w8"
SIZE = 64
STRIDE = 16


@pytest.fixture(scope="module")
def spark():
    torch.manual_seed(0)
    return build_spark(MODEL, input_size=SIZE, decoder_width=32)


def test_mask_grid_follows_the_custom_stride(spark):
    assert spark.downsample_ratio == STRIDE
    images = torch.randn(2, 3, SIZE, SIZE)
    output = spark(images)
    assert output.active.shape == (2, 1, SIZE // STRIDE, SIZE // STRIDE)


def test_masked_pixels_do_not_reach_visible_features(spark):
    spark.eval()
    active = random_mask(2, SIZE // STRIDE, SIZE // STRIDE, visible=6, seed=1)
    images = torch.randn(2, 3, SIZE, SIZE)
    visible = active.repeat_interleave(STRIDE, 2).repeat_interleave(STRIDE, 3)
    altered = torch.where(visible, images, torch.randn_like(images) * 5)
    with torch.no_grad():
        for a, b in zip(spark.encode(images, active), spark.encode(altered, active)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_all_visible_equals_the_dense_model(spark):
    spark.eval()
    dense = small_resnet_w8(num_classes=0)
    dense.load_state_dict(spark.encoder.model.state_dict())
    dense.eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    active = torch.ones(2, 1, SIZE // STRIDE, SIZE // STRIDE, dtype=torch.bool)
    with torch.no_grad():
        sparse = spark.encode(images, active)
        reference = dense.forward_intermediates(images, indices=4, intermediates_only=True)
    assert len(sparse) == len(reference) == 4
    for a, b in zip(sparse, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_encoder_weights_load_into_a_classifier(spark):
    classifier = small_resnet_w8(num_classes=7)
    result = classifier.load_state_dict(copy.deepcopy(spark.encoder.model.state_dict()), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert classifier(torch.randn(2, 3, SIZE, SIZE)).shape == (2, 7)


@pytest.mark.parametrize("path, message", [
    ("no_such_package_xyz:factory", "cannot import 'no_such_package_xyz'"),
    ("sparkmim.models:no_such_factory", "has no callable 'no_such_factory'"),
])
def test_bad_factory_paths_are_named(path, message):
    with pytest.raises(ValueError, match=message):
        build_spark(path, input_size=SIZE)


def test_spark_pretrain_refuses_a_bad_factory_in_one_line(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "sparkmim.pretrain", "--model", "sparkmim.models:nope",
                                "--output-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert completed.returncode == 2
    last = completed.stderr.strip().splitlines()[-1]
    assert "nope" in last and "Traceback" not in completed.stderr


@pytest.mark.parametrize("name, stride", [("resnet18", 32), ("convnext_atto", 32), (MODEL, STRIDE)])
def test_total_stride_is_read_from_feature_info_without_building_weights(name, stride):
    from sparkmim.sparse.encoder import total_stride
    assert total_stride(name) == stride


def test_spark_pretrain_checks_the_size_against_the_custom_stride(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "sparkmim.pretrain", str(tmp_path), "--model", MODEL,
                                "--input-size", "70", "--output-dir", str(tmp_path / "run")],
                               capture_output=True, text=True)
    assert completed.returncode == 2
    assert "not a multiple of the encoder's total stride 16" in completed.stderr and "--input-size 64 64" in completed.stderr
