"""``spark-bench coverage``: the trial's invariant checks can fail, families are ranked and qualified, and
the command writes the table with the refusal reasons (on two small timm families)."""
import json

import pytest
import torch

from sparkmim import build_spark
from sparkmim.benchmarks.cli import main
from sparkmim.benchmarks.coverage.families import qualifies, survey_family
from sparkmim.benchmarks.coverage.trial import (InvariantViolation, REFUSED, check_invariants, run_trial,
                                                training_step)
from sparkmim.sparse.encoder import create_timm_encoder

SIZE = 64


@pytest.fixture()
def resnet():
    torch.manual_seed(0)
    return build_spark("resnet18", input_size=SIZE, decoder_width=32), create_timm_encoder("resnet18")


def test_invariants_hold_for_a_supported_model(resnet):
    spark, dense = resnet
    training_step(spark, SIZE)
    assert check_invariants(spark, dense, SIZE) < 1e-5


def test_a_layer_leaking_into_masked_positions_is_caught(resnet):
    spark, dense = resnet
    spark.encoder.model.layer4.register_forward_hook(lambda module, inputs, output: output + 1e-3)
    with pytest.raises(InvariantViolation, match="invariant 1: .* at feature level 3"):
        check_invariants(spark, dense, SIZE)


def test_masked_pixels_reaching_visible_features_are_caught(resnet):
    spark, dense = resnet
    raw = {}  # a layer that sees the unmasked image (as a statistic over the whole input would)
    spark.encoder.register_forward_pre_hook(lambda module, inputs: raw.update(images=inputs[0]))
    spark.encoder.model.layer3.register_forward_hook(
        lambda module, inputs, output: output + raw["images"].mean() * (output != 0))
    with pytest.raises(InvariantViolation, match="invariant 2: masked pixels change visible features at level 2"):
        check_invariants(spark, dense, SIZE)


def test_a_sparse_encoder_differing_from_the_dense_model_is_caught(resnet):
    spark, dense = resnet  # a sparse-only change that keeps zeros zero and ignores masked pixels
    spark.encoder.model.layer2.register_forward_hook(lambda module, inputs, output: output * 1.01)
    with pytest.raises(InvariantViolation, match="invariant 3: .* level 1"):
        check_invariants(spark, dense, SIZE)


def test_strides_must_double_over_the_last_four_levels():
    assert qualifies([2, 4, 8, 16, 32]) and qualifies([4, 8, 16, 32])
    assert not qualifies([4, 8, 16]) and not qualifies([16, 16, 16, 16]) and not qualifies([4, 8, 32, 64])


def test_family_members_are_ranked_by_size_and_reasons_kept():
    vgg = survey_family("vgg")
    sizes = [vgg.params_m[name] for name in vgg.members]
    assert vgg.qualifies and sizes == sorted(sizes) and vgg.members[0] == "vgg11"
    vit = survey_family("convmixer")
    assert not vit.qualifies and vit.reason.startswith("strides [")


def test_a_refusal_is_reported_with_the_layer_and_reason():
    result = run_trial("inception_v3")
    assert result.status == REFUSED
    assert "Conv2d_1a_3x3.conv" in result.reason and "does not line up with the" in result.reason


def test_attention_is_named_as_the_reason():
    result = run_trial("davit_tiny")
    assert result.status == REFUSED and "attention block" in result.reason, result.reason


@pytest.mark.slow
def test_command_writes_the_table(tmp_path):
    out, report = tmp_path / "coverage.md", tmp_path / "coverage.json"
    assert main(["coverage", "--families", "vgg,inception_v3", "--out", str(out), "--json", str(report),
                 "--jobs", "2", "--tries", "1"]) == 0
    table = out.read_text()
    assert "| vgg | convolutional | vgg11 (" in table and "| works |" in table
    assert "| inception_v3 | convolutional | inception_v3 (" in table and "| refused | cannot make" in table
    assert "1 of 2 convolutional families (50%)" in table and "raw crashes: 0" in table
    summary = json.loads(report.read_text())["summary"]
    assert (summary["qualifying"], summary["works"], summary["crashes"]) == (2, 1, 0)
