"""Our SparK equals the reference implementation, number for number, on its own fixtures."""
from pathlib import Path

import pytest
import torch

from sparkmim.convert import KeyAccountingError, spark_state_from_reference
from sparkmim.convert.reference import SPARKMIM_ENCODER_PREFIX
from sparkmim.convert.reference_fixture import load_reference_case
from tests.core_utils import spark_from_fixture

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"  # data of the repository: never skipped
CASES = ["resnet_tiny", "resnet_bottleneck_tiny", "convnext_tiny_cfg"]
RTOL = 1e-4  # relative to the largest magnitude of each tensor; observed agreement is 1e-7 .. 5e-5


def load_case(name: str) -> dict:
    return load_reference_case(FIXTURES / f"{name}.pt")


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = expected.abs().max().item() + 1e-12
    error = (actual.detach().float() - expected.float()).abs().max().item() / scale
    assert error < RTOL, f"{what}: relative error {error:.2e}"


def reference_names_to_ours(tensors: dict) -> dict:
    """Map a flat reference-named dict (gradients / running statistics) onto our names."""
    prefix = "sparse_encoder.sp_cnn."
    module = {k: v for k, v in tensors.items()}
    if not any(k.startswith(prefix) for k in module):
        module[prefix + "__placeholder__"] = torch.zeros(1)
    mapped, _, _ = spark_state_from_reference(module)
    mapped.pop(SPARKMIM_ENCODER_PREFIX + "__placeholder__", None)
    return mapped


@pytest.fixture(params=CASES)
def case(request):
    return load_case(request.param)


def run_with_features(spark, case):
    captured = {}
    handle = spark.encoder.register_forward_hook(lambda _m, _i, out: captured.setdefault("features", out))
    out = spark(case["input"], case["active"])
    handle.remove()
    return out, captured["features"]


def test_train_mode_matches_reference(case):
    spark = spark_from_fixture(case).train()
    out, features = run_with_features(spark, case)
    assert_close_rel(out.loss, case["train"]["loss"], "train loss")
    for level, (ours, theirs) in enumerate(zip(features, case["train"]["features"])):
        assert_close_rel(ours, theirs, f"feature {level}")
    assert_close_rel(out.reconstruction, case["train"]["rec_or_inp"], "reconstruction")
    out.loss.backward()
    params = dict(spark.named_parameters())
    expected_grads = reference_names_to_ours(case["train"]["grad"])
    assert len(expected_grads) == sum(p.grad is not None for p in params.values())
    for name, grad in expected_grads.items():
        assert_close_rel(params[name].grad, grad, f"gradient of {name}")
    buffers = dict(spark.named_buffers())
    expected_running = reference_names_to_ours(case["train"]["running"])
    assert expected_running
    for name, value in expected_running.items():
        assert_close_rel(buffers[name], value, f"running statistic {name}")


def test_eval_mode_matches_reference(case):
    spark = spark_from_fixture(case).eval()
    with torch.no_grad():
        out, features = run_with_features(spark, case)
    assert_close_rel(out.loss, case["eval"]["loss"], "eval loss")
    for level, (ours, theirs) in enumerate(zip(features, case["eval"]["features"])):
        assert_close_rel(ours, theirs, f"eval feature {level}")


def test_importer_names_unmapped_keys():
    case = load_case("resnet_tiny")
    module = dict(case["state"]["module"])
    module["dense_decoder.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(KeyAccountingError, match="dense_decoder.extra_head.weight"):
        spark_state_from_reference({"module": module})


def test_checkpoint_of_another_model_names_mismatches():
    from sparkmim import build_spark
    from sparkmim.convert import load_state_dict_checked
    state, _, _ = spark_state_from_reference(load_case("resnet_tiny")["state"])
    other = build_spark("resnet18", input_size=96, decoder_width=64)
    with pytest.raises(KeyAccountingError, match="shape mismatch"):
        load_state_dict_checked(other, state, "resnet_tiny checkpoint")
