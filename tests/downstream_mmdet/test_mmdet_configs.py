"""The packaged configs: recipe values, and the optimizer's layer-wise lr scales for ConvNeXt-B."""
import pytest

pytest.importorskip("mmdet", reason="mmdet is not installed: the MMDetection tests run in the detection "
                                    "environment (bash scripts/setup_mmdet_env.sh && bash scripts/run_mmdet_tests.sh)")

from sparkmim.downstream_mmdet.settings import CONFIG_ALIASES, resolve_config  # noqa: E402

SIZES = {"convnext-s": ("small", 0.4, [96, 192, 384, 768]), "convnext-b": ("base", 0.5, [128, 256, 512, 1024]),
         "convnext-l": ("large", 0.6, [192, 384, 768, 1536])}
BASE_LR, DECAY = 2e-4, 0.65


def load(alias):
    from mmengine.config import Config

    return Config.fromfile(str(resolve_config(alias)))


@pytest.mark.parametrize("alias", sorted(CONFIG_ALIASES))
def test_recipe_values(alias):
    cfg = load(alias)
    arch, drop_path, widths = SIZES[alias]
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == ("mmpretrain.ConvNeXt", arch, drop_path)
    assert list(backbone.out_indices) == [0, 1, 2, 3] and backbone.gap_before_final_norm is False
    assert backbone.init_cfg.prefix == "backbone."
    assert list(cfg.model.neck.in_channels) == widths
    assert cfg.model.type == "MaskRCNN" and cfg.model.neck.type == "FPN"
    assert cfg.train_cfg.max_epochs == 36
    step = next(s for s in cfg.param_scheduler if s.type == "MultiStepLR")
    assert list(step.milestones) == [27, 33] and step.gamma == 0.2
    wrapper = cfg.optim_wrapper
    assert wrapper.type == "AmpOptimWrapper" and wrapper.constructor == "LearningRateDecayOptimizerConstructor"
    assert dict(wrapper.paramwise_cfg) == {"decay_rate": DECAY, "decay_type": "layer_wise", "num_layers": 12}
    assert (wrapper.optimizer.type, wrapper.optimizer.lr, wrapper.optimizer.weight_decay) == ("AdamW", BASE_LR, 0.05)
    pipeline = cfg.train_dataloader.dataset.pipeline
    choice = next(t for t in pipeline if t.type == "RandomChoice")
    scales = [s[0] for s in choice.transforms[0][0].scales]
    assert min(scales) == 480 and max(scales) == 800
    assert any(t.type == "RandomCrop" for t in choice.transforms[1])
    assert "bbox" in cfg.val_evaluator.metric and "segm" in cfg.val_evaluator.metric


def expected_layer(name: str) -> int:
    """The layer groups of the recipe written out for ConvNeXt-B (depths 3, 3, 27, 3; 12 groups + 2):
    stem 0, stage 0 -> 1, stage 1 and its downsample -> 2, stage-2 downsample -> 3, stage-2 blocks
    3 + block // 3 (3..11), stage 3 and its downsample -> 12, everything else (output norms, FPN,
    heads) -> 13."""
    table = {"backbone.downsample_layers.0.": 0, "backbone.stages.0.": 1, "backbone.downsample_layers.1.": 2,
             "backbone.stages.1.": 2, "backbone.downsample_layers.2.": 3, "backbone.downsample_layers.3.": 12,
             "backbone.stages.3.": 12}
    for prefix, layer in table.items():
        if name.startswith(prefix):
            return layer
    if name.startswith("backbone.stages.2."):
        return 3 + int(name.split(".")[3]) // 3
    return 13


def test_layer_wise_lr_scales_for_convnext_b():
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    cfg = load("convnext-b")
    cfg.optim_wrapper.type = "OptimWrapper"  # the CPU wrapper; the groups come from the constructor alike
    init_default_scope("mmdet")
    detector = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(detector, cfg.optim_wrapper).optimizer
    groups = {name: group for group in optimizer.param_groups for name in group["param_names"]}
    params = dict(detector.named_parameters())
    assert sorted(groups) == sorted(params)  # every parameter in exactly one group
    layers = {expected_layer(name) for name in params}
    assert layers == set(range(14))
    spot = {"backbone.downsample_layers.0.0.weight": DECAY ** 13, "backbone.stages.0.2.gamma": DECAY ** 12,
            "backbone.stages.2.0.pointwise_conv1.weight": DECAY ** 10,
            "backbone.stages.2.26.depthwise_conv.bias": DECAY ** 2,
            "backbone.stages.3.2.norm.weight": DECAY, "backbone.norm3.weight": 1.0,
            "neck.fpn_convs.0.conv.weight": 1.0, "roi_head.mask_head.conv_logits.weight": 1.0}
    for name, scale in spot.items():
        assert groups[name]["lr"] == pytest.approx(BASE_LR * scale), name
    for name, param in params.items():
        group = groups[name]
        assert group["lr_scale"] == pytest.approx(DECAY ** (13 - expected_layer(name))), name
        assert group["lr"] == pytest.approx(BASE_LR * group["lr_scale"]), name
        no_decay = param.ndim == 1 or name.endswith(".bias")
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
