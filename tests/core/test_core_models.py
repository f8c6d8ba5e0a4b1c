"""The models the paper uses (and their smaller siblings) work out of the box, and the reference
release layout of each imports into them key for key."""
import pytest
import torch

from sparkmim import build_spark
from sparkmim.convert import load_state_dict_checked, spark_state_from_reference
from sparkmim.convert.reference import build_kwargs_from_reference_config
from tests.core_utils import reference_release

PAPER_MODELS = ["resnet50", "resnet101", "resnet152", "resnet200", "convnext_small", "convnext_base", "convnext_large"]
OTHER_MODELS = ["resnet18", "resnet34", "convnext_tiny", "convnextv2_tiny"]

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

    release = reference_release(spark, arch)
    state, report, config = spark_state_from_reference(release)
    assert set(report.dropped) == {"imn_m", "imn_s", "norm_black", "config"}
    imported = build_spark(release["arch"], **build_kwargs_from_reference_config(config))
    load_state_dict_checked(imported, state, f"{arch} reference release",
                            allowed_missing=["encoder.model." + k for k in imported.encoder.unused_state_keys])
    ours = spark.state_dict()
    for key, value in imported.state_dict().items():
        if key in state:
            assert torch.equal(value, ours[key]), key


def test_a_float64_model_computes_its_loss_in_float64():
    """A float64 run is float64 to the loss: the derivative along the gradient agrees with a central
    difference to ~1e-8 (a kink of ReLU or max pooling aside).

    The loss used to cast to float32 (``.float()``): a GPU's float64 run then agreed with the CPU's
    only to float32 rounding (1e-7 on an H200), and this difference quotient was float32 noise (2x off)."""
    torch.manual_seed(0)
    spark = build_spark("test_resnet", input_size=64, decoder_width=32).double().eval()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    active = spark.mask(2, 2, 2, images.device)
    loss = spark(images, active).loss
    assert loss.dtype == torch.float64
    parameters = [p for p in spark.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    pairs = [(p, g) for p, g in zip(parameters, gradients) if g is not None]
    norm = torch.sqrt(sum(g.square().sum() for _, g in pairs))

    def loss_moved_along_gradient(step: float) -> torch.Tensor:
        with torch.no_grad():
            for parameter, gradient in pairs:
                parameter.add_(step * gradient / norm)
            moved = spark(images, active).loss
            for parameter, gradient in pairs:
                parameter.sub_(step * gradient / norm)
        return moved

    step = 1e-6
    difference = (loss_moved_along_gradient(step) - loss_moved_along_gradient(-step)) / (2 * step)
    assert abs(difference - norm).item() <= 1e-6 * norm.item(), (difference.item(), norm.item())
