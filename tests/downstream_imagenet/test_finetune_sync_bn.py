"""spark-finetune's cross-GPU BatchNorm conversion keeps every layer of the network (it runs only under
multi-GPU torchrun; the conversion itself is checked here on CPU, in eval mode)."""
import pytest
import timm
import torch

from sparkmim.downstream_imagenet.main import synchronised_batchnorms


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18"])
def test_synchronised_batchnorms_keep_the_network(name):
    # timm's BatchNormAct2d carries an activation: a plain SyncBatchNorm in its place changes the network
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    expected = model(images)
    synced = synchronised_batchnorms(model).eval()
    assert not [m for m in synced.modules() if type(m) in (torch.nn.BatchNorm2d, timm.layers.BatchNormAct2d)]
    torch.testing.assert_close(synced(images), expected, rtol=0, atol=0)
