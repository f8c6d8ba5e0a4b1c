"""torch.compile(fullgraph=True) traces SparK's forward: no graph breaks, no host-device syncs."""
import pytest
import torch

from sparkmim import build_spark
from tests.core_utils import random_mask


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_spark_forward_compiles_fullgraph():
    torch.manual_seed(0)
    spark = build_spark("resnet18", input_size=64, decoder_width=64).train()
    images = torch.randn(2, 3, 64, 64)
    active = random_mask(2, 2, 2, visible=2, seed=0)
    eager = spark(images, active).loss.item()
    compiled = torch.compile(lambda x, m: spark(x, m).loss, fullgraph=True, backend="aot_eager")
    loss = compiled(images, active)
    loss.backward()
    assert torch.isfinite(loss)
    assert abs(loss.item() - eager) < 1e-3 * max(1.0, abs(eager))
