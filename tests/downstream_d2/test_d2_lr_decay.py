"""Layer ids and lr factors of the Detectron2 layer-wise decay (runs without Detectron2)."""
import pytest
import timm

from sparkmim.convert.detectron2 import timm_resnet_to_d2
from sparkmim.downstream_d2.lr_decay import ResNetLayerDecay, count_res4_blocks

HEADS = ["backbone.fpn_lateral2.weight", "backbone.fpn_output5.norm.bias", "proposal_generator.rpn_head.conv.weight",
         "roi_heads.box_head.conv1.weight", "roi_heads.box_predictor.cls_score.weight",
         "roi_heads.mask_head.predictor.bias"]


def fpn_names(depth: str) -> list:
    """Backbone parameter names of a Detectron2 FPN model, from the converter's ResNet keys."""
    keys = timm_resnet_to_d2(timm.create_model(depth, pretrained=False).state_dict()).model
    return [f"backbone.bottom_up.{k}" for k in keys]


@pytest.mark.parametrize("name, layer_id", [
    ("backbone.bottom_up.stem.conv1.weight", 0), ("backbone.bottom_up.stem.conv1.norm.bias", 0),
    ("backbone.bottom_up.res2.0.shortcut.weight", 1), ("backbone.bottom_up.res2.2.conv3.norm.weight", 1),
    ("backbone.bottom_up.res3.3.conv1.weight", 2), ("backbone.bottom_up.res4.0.conv1.weight", 3),
    ("backbone.bottom_up.res4.2.conv2.norm.weight", 3), ("backbone.bottom_up.res4.3.conv1.weight", 4),
    ("backbone.bottom_up.res4.5.conv3.weight", 4), ("backbone.bottom_up.res5.0.shortcut.norm.weight", 5),
    ("backbone.bottom_up.res5.2.conv3.weight", 5), ("roi_heads.res5.norm.weight", 6),
    ("roi_heads.res5.1.conv1.weight", 5)] + [(name, 6) for name in HEADS])
def test_resnet50_layer_ids(name, layer_id):
    decay = ResNetLayerDecay(res4_blocks=6, decay=0.6)
    assert decay.num_layers == 5
    assert decay.layer_id(name) == layer_id
    assert decay(name) == pytest.approx(0.6 ** (6 - layer_id))


@pytest.mark.parametrize("depth, res4_blocks, num_layers", [("resnet50", 6, 5), ("resnet101", 23, 11),
                                                             ("resnet152", 36, 15), ("resnet18", 2, 4)])
def test_depth_is_read_from_the_model(depth, res4_blocks, num_layers):
    names = fpn_names(depth) + HEADS
    decay = ResNetLayerDecay.from_param_names(names, 0.6)
    assert (decay.res4_blocks, decay.num_layers) == (res4_blocks, num_layers)
    ids = {decay.layer_id(n) for n in names}
    assert ids == set(range(num_layers + 2))  # every layer id is used, none skipped
    last_res4 = f"backbone.bottom_up.res4.{res4_blocks - 1}.conv1.weight"
    assert decay.layer_id(last_res4) == num_layers - 1


def test_resnet101_factors():
    decay = ResNetLayerDecay.from_param_names(fpn_names("resnet101"), 0.6)
    expected = {"backbone.bottom_up.stem.conv1.weight": 0.6 ** 12,
                "backbone.bottom_up.res2.1.conv1.weight": 0.6 ** 11,
                "backbone.bottom_up.res3.0.conv1.weight": 0.6 ** 10,
                "backbone.bottom_up.res4.0.conv1.weight": 0.6 ** 9,
                "backbone.bottom_up.res4.11.conv1.weight": 0.6 ** 6,
                "backbone.bottom_up.res4.22.conv1.weight": 0.6 ** 2,
                "backbone.bottom_up.res5.1.conv1.weight": 0.6,
                "roi_heads.box_predictor.bbox_pred.weight": 1.0}
    for name, factor in expected.items():
        assert decay(name) == pytest.approx(factor), name


def test_no_decay_and_bad_values():
    assert ResNetLayerDecay(6, 1.0)("backbone.bottom_up.stem.conv1.weight") == 1.0
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="LR_DECAY"):
            ResNetLayerDecay(6, bad)
    with pytest.raises(ValueError, match="res4"):
        count_res4_blocks(HEADS)
