"""Layer-wise lr decay: the scale of every parameter of ResNet-50 and ConvNeXt-B against explicit tables."""
import math
import re

import pytest
import timm
import torch

from sparkmim.downstream_imagenet.layer_decay import (LayerDecayError, lr_scales, param_groups,
                                                      resnet_assigner)
from sparkmim.utils.schedule import apply_lr_wd

# decay 0.7; scale = 0.7 ** (N + 1 - layer_id), written out as numbers
RESNET50_TABLE = [  # N = 6
    (r"conv1\.|bn1\.", 0.0823543),             # stem, layer 0
    (r"layer1\.", 0.117649),                   # layer 1
    (r"layer2\.[01]\.", 0.16807),              # layer 2: blocks 0-1
    (r"layer2\.[23]\.", 0.2401),               # layer 3: blocks 2-3
    (r"layer3\.[012]\.", 0.343),               # layer 4: blocks 0-2
    (r"layer3\.[345]\.", 0.49),                # layer 5: blocks 3-5
    (r"layer4\.", 0.7),                        # layer 6 = N
    (r"fc\.", 1.0),                            # classifier, N + 1
]

CONVNEXT_B_TABLE = [  # N = 12 (27 blocks in the third stage)
    (r"stem\.", 0.0096889010407),                        # 0
    (r"stages\.0\.", 0.013841287201),                    # 1
    (r"stages\.1\.", 0.01977326743),                     # 2 (downsample and blocks)
    (r"stages\.2\.downsample\.", 0.0282475249),          # 3
    (r"stages\.2\.blocks\.[012]\.", 0.0282475249),       # 3 + j // 3 = 3
    (r"stages\.2\.blocks\.[345]\.", 0.040353607),        # 4
    (r"stages\.2\.blocks\.[678]\.", 0.05764801),         # 5
    (r"stages\.2\.blocks\.(9|10|11)\.", 0.0823543),      # 6
    (r"stages\.2\.blocks\.(12|13|14)\.", 0.117649),      # 7
    (r"stages\.2\.blocks\.(15|16|17)\.", 0.16807),       # 8
    (r"stages\.2\.blocks\.(18|19|20)\.", 0.2401),        # 9
    (r"stages\.2\.blocks\.(21|22|23)\.", 0.343),         # 10
    (r"stages\.2\.blocks\.(24|25|26)\.", 0.49),          # 11
    (r"stages\.3\.", 0.7),                               # 12 = N (downsample and blocks)
    (r"head\.", 1.0),                                    # 13: final norm and classifier
]


def check_table(model: torch.nn.Module, table) -> None:
    scales = lr_scales(model, 0.7)
    names = [name for name, _ in model.named_parameters()]
    assert sorted(scales) == sorted(names)
    for name in names:
        matches = [scale for pattern, scale in table if re.match(pattern, name)]
        assert len(matches) == 1, f"{name} matches {len(matches)} table rows"
        assert math.isclose(scales[name], matches[0], rel_tol=1e-9), (name, scales[name], matches[0])


def test_resnet50_every_parameter_scale():
    check_table(timm.create_model("resnet50"), RESNET50_TABLE)


def test_convnext_base_every_parameter_scale():
    check_table(timm.create_model("convnext_base"), CONVNEXT_B_TABLE)


@pytest.mark.parametrize("name, depths, expected_n", [
    ("resnet101", (4, 23), 2 + 2 + 8),   # (b2, b3) = (2, 3)
    ("resnet152", (8, 36), 2 + 2 + 9),   # (4, 4)
    ("resnet200", (24, 36), 2 + 6 + 9),  # (4, 4)
])
def test_deeper_resnets_group_sizes(name, depths, expected_n):
    model = timm.create_model(name, pretrained=False)
    assert (len(model.layer2), len(model.layer3)) == depths
    assigner = resnet_assigner(model)
    assert assigner.num_layers == expected_n
    assert assigner.layer_of("fc.weight") == expected_n + 1
    assert assigner.layer_of("layer4.0.conv1.weight") == expected_n


def test_convnext_small_depth_uses_six_layers():
    # convnext_tiny has 9 blocks in its third stage -> N = 6
    scales = lr_scales(timm.create_model("convnext_tiny"), 0.5)
    assert scales["stem.0.weight"] == pytest.approx(0.5 ** 7)
    assert scales["stages.2.blocks.8.conv_dw.weight"] == pytest.approx(0.5 ** (7 - 5))
    assert scales["stages.3.blocks.0.conv_dw.weight"] == pytest.approx(0.5)
    assert scales["head.fc.weight"] == 1.0


def test_groups_drive_lr_and_weight_decay_through_the_schedule():
    model = timm.create_model("resnet18", num_classes=4)
    groups = param_groups(model, 0.5)
    optimizer = torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0)
    apply_lr_wd(optimizer.param_groups, lr=0.1, weight_decay=0.05)
    by_name = {name: group for group in optimizer.param_groups for name in group["param_names"]}
    # resnet18: (b2, b3) = (2, 3), L2 = L3 = 2 -> N = 4, stem scale 0.5 ** 5
    assert by_name["conv1.weight"]["lr"] == pytest.approx(0.1 * 0.5 ** 5)
    assert by_name["conv1.weight"]["weight_decay"] == pytest.approx(0.05)
    assert by_name["bn1.weight"]["weight_decay"] == 0.0
    assert by_name["fc.bias"]["weight_decay"] == 0.0
    assert by_name["fc.weight"]["lr"] == pytest.approx(0.1)


# efficientnet_b0 by timm's stages (coarse group_matcher): stem, the 7 block stages, conv_head, classifier
EFFICIENTNET_B0_STAGES_TABLE = [(r"conv_stem\.|bn1\.", 0.7 ** 8)] + [
    (rf"blocks\.{stage}\.", 0.7 ** (7 - stage)) for stage in range(7)] + [
    (r"conv_head\.|bn2\.", 0.7), (r"classifier\.", 1.0)]


def test_other_models_are_grouped_by_timm_stages():
    check_table(timm.create_model("efficientnet_b0", num_classes=4), EFFICIENTNET_B0_STAGES_TABLE)


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnety_004", "resnet50", "densenet121"])
def test_blocks_grouping_equals_timm_param_groups_layer_decay(name):
    from timm.optim import param_groups_layer_decay

    model = timm.create_model(name, num_classes=4)
    theirs = {id(param): group["lr_scale"] for group in param_groups_layer_decay(model, layer_decay=0.8)
              for param in group["params"]}
    ours = lr_scales(model, 0.8, grouping="blocks")
    named = dict(model.named_parameters())
    assert len(set(ours.values())) > 5  # really decayed, not one layer
    for param_name, scale in ours.items():
        assert scale == pytest.approx(theirs[id(named[param_name])], rel=1e-12), param_name


def test_auto_keeps_the_paper_table_and_paper_grouping_is_refused_elsewhere():
    resnet = timm.create_model("resnet50")
    assert lr_scales(resnet, 0.7, "paper") == lr_scales(resnet, 0.7, "auto")
    assert lr_scales(resnet, 0.7, "stages") != lr_scales(resnet, 0.7, "auto")  # timm numbers it otherwise
    with pytest.raises(LayerDecayError, match="--layer-grouping stages"):
        param_groups(timm.create_model("mobilenetv3_small_050", num_classes=4), 0.7, "paper")


def test_model_without_any_grouping_is_refused_with_the_way_out():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    with pytest.raises(LayerDecayError, match="--layer-decay 1.0"):
        param_groups(model, 0.7)
    assert set(lr_scales(model, 1.0).values()) == {1.0}
