"""The sparse-encoder invariants, checked on many timm CNN families with tiny inputs."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

from sparkmim import MaskNotSetError, UnsupportedLayerError, build_spark, make_sparse_encoder
from sparkmim.sparse.encoder import create_timm_encoder
from sparkmim.sparse.norms import SparseBatchNorm2d
from tests.core_utils import capture_layer_outputs, masked_part, random_mask

# family -> the layer types it exercises
FAMILIES = [
    "resnet18",              # BasicBlock, BatchNorm2d, max pooling
    "resnet26",              # Bottleneck
    "seresnet18",            # squeeze-excitation (SEModule)
    "ecaresnet26t",          # ECA attention, deep stem, avg-pool shortcut
    "resnet50_gn",           # GroupNorm
    "convnext_atto",         # LayerNorm channels-first and channels-last, Linear on feature maps
    "convnextv2_atto",       # GlobalResponseNorm
    "efficientnet_b0",       # BatchNormAct2d, SiLU, EfficientNet SqueezeExcite
    "tf_efficientnet_b0",    # padding-same convolutions
    "mobilenetv3_small_100", # hard-swish, hard-sigmoid SE
    "regnety_002",           # RegNet with SE, BatchNormAct2d
    "nf_resnet26",           # weight-standardised convolutions, no norm layers
    # rules of the general mechanism (slow marker: larger models or longer builds)
    pytest.param("legacy_seresnet18", marks=pytest.mark.slow),   # legacy SE with an inline global mean
    pytest.param("skresnet18", marks=pytest.mark.slow),          # selective-kernel attention (gate only)
    pytest.param("fastvit_t8", marks=pytest.mark.slow),          # LayerScale2d, re-parameterisable mixers
    pytest.param("hgnetv2_b0", marks=pytest.mark.slow),          # LearnableAffineBlock (a*x+b), ESE attention
    pytest.param("inception_next_atto", marks=pytest.mark.slow), # refuses global_pool=''
    pytest.param("swiftformer_xs", marks=pytest.mark.slow),      # additive attention pooled over visible tokens
]
SIZE = 64
BATCH = 2
# selective-kernel attention normalises pooled vectors over a batch of 2 in training mode, which
# amplifies float32 rounding of the sparse BatchNorms (measured: 4e-4 at level 3 on values of ~5)
TRAIN_TOLERANCE = {"skresnet18": 1e-3}


def build(name: str):
    torch.manual_seed(0)
    return build_spark(name, input_size=SIZE, decoder_width=64)


def dense_twin(name: str, spark) -> nn.Module:
    dense = create_timm_encoder(name)
    dense.load_state_dict(spark.encoder.model.state_dict())
    return dense


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, build(request.param)


def test_every_layer_output_is_zero_where_masked(family):
    name, spark = family
    spark.train()
    active = random_mask(BATCH, SIZE // 32, SIZE // 32, visible=2, seed=1)
    outputs, handles = capture_layer_outputs(spark.encoder.model)
    try:
        spark(torch.randn(BATCH, 3, SIZE, SIZE), active)
    finally:
        for handle in handles:
            handle.remove()
    checked = 0
    for layer, (output, channels_last) in outputs.items():
        masked = masked_part(output, channels_last, active)
        if masked is None:
            continue
        checked += 1
        assert torch.count_nonzero(masked) == 0, f"{name}: '{layer}' has non-zero values at masked positions"
    assert checked > 10


def test_masked_pixels_do_not_reach_visible_features_or_prediction(family):
    name, spark = family
    spark.eval()
    active = random_mask(BATCH, SIZE // 32, SIZE // 32, visible=2, seed=2)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    pixels_visible = active.repeat_interleave(32, 2).repeat_interleave(32, 3)
    altered = torch.where(pixels_visible, images, torch.randn_like(images) * 5)
    with torch.no_grad():
        first, second = spark(images, active), spark(altered, active)
        features_first, features_second = spark.encode(images, active), spark.encode(altered, active)
    for a, b in zip(features_first, features_second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(first.prediction, second.prediction, rtol=0, atol=0)
    assert not torch.equal(first.loss, second.loss)  # only the target (masked pixels) changed


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_all_visible_equals_dense_timm_model(family, train):
    name, spark = family
    dense = dense_twin(name, spark)
    spark.train(train)
    dense.train(train)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    active = torch.ones(BATCH, 1, SIZE // 32, SIZE // 32, dtype=torch.bool)
    spark_state = copy.deepcopy(spark.encoder.model.state_dict())
    with torch.no_grad():
        sparse_features = spark.encode(images, active)
        dense_features = dense.forward_intermediates(images, indices=4, intermediates_only=True)
    for level, (a, b) in enumerate(zip(sparse_features, dense_features)):
        tolerance = TRAIN_TOLERANCE.get(name, 1e-4) if train else 1e-4
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, msg=f"{name} level {level}")
    if train:  # running statistics move exactly as the dense BatchNorms' do
        dense_state = dense.state_dict()
        for key, value in spark.encoder.model.state_dict().items():
            if "running" in key:
                torch.testing.assert_close(value, dense_state[key], rtol=1e-4, atol=1e-5, msg=key)
    spark.encoder.model.load_state_dict(spark_state)


def test_every_trainable_parameter_gets_a_gradient(family):
    # DistributedDataParallel waits for a gradient of every trainable parameter in every step: a parameter
    # no feature map uses (a classifier head's norm, EfficientNet's conv_head) is frozen at build
    name, spark = family
    state = copy.deepcopy(spark.state_dict())
    spark.train()
    spark(torch.randn(BATCH, 3, SIZE, SIZE)).loss.backward()
    without = [key for key, param in spark.named_parameters() if param.requires_grad and param.grad is None]
    frozen = [key for key, param in spark.encoder.model.named_parameters() if not param.requires_grad]
    spark.zero_grad(set_to_none=True)
    spark.load_state_dict(state)
    assert without == [], f"{name}: trainable but without a gradient: {without}"
    assert set(frozen) <= set(spark.encoder.unused_state_keys)
    expected = {"convnext_atto": ["head.norm.weight", "head.norm.bias"], "resnet18": [],
                "efficientnet_b0": ["conv_head.weight", "bn2.weight", "bn2.bias"]}
    assert frozen == expected.get(name, frozen)


def test_encoder_state_dict_loads_into_timm(family):
    name, spark = family
    target = timm.create_model(name, pretrained=False)
    result = target.load_state_dict(spark.encoder.model.state_dict(), strict=False)
    classifier = target.default_cfg.get("classifier", "fc")
    assert result.unexpected_keys == []
    assert all(key.startswith(classifier) for key in result.missing_keys), result.missing_keys


def test_feature_shapes_and_mask_count():
    spark = build_spark("resnet18", input_size=(64, 96), mask_ratio=0.6, decoder_width=64)
    images = torch.randn(3, 3, 64, 96)
    out = spark(images)
    assert out.active.shape == (3, 1, 2, 3)
    assert out.active.flatten(1).sum(1).tolist() == [round(6 * 0.4)] * 3
    assert out.reconstruction.shape == images.shape
    features = spark.encode(images, out.active)
    assert [f.shape[1:] for f in features] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]


@pytest.mark.parametrize("grid,ratio", [((7, 7), 0.6), ((12, 12), 0.75), ((2, 3), 0.5), ((5, 9), 0.3)])
def test_mask_keeps_exact_number_of_patches(grid, ratio):
    spark = build_spark("resnet18", input_size=64, mask_ratio=ratio, decoder_width=64)
    h, w = grid
    active = spark.mask(16, h, w, torch.device("cpu"))
    assert active.dtype == torch.bool and active.shape == (16, 1, h, w)
    assert set(active.flatten(1).sum(1).tolist()) == {round(h * w * (1 - ratio))}


def test_loss_counts_masked_patches_only():
    spark = build_spark("resnet18", input_size=64, decoder_width=64)
    images = torch.randn(2, 3, 64, 64)
    active = random_mask(2, 2, 2, visible=2, seed=3)
    target, _, _ = spark.patch_targets(images)
    prediction = target.clone()
    visible = active.flatten(1)
    prediction[visible] = 100.0  # garbage on visible patches is not penalised
    assert spark.loss(prediction, target, active).item() == 0.0
    prediction[~visible] += 1.0  # an error of 1 on every masked pixel gives exactly 1
    assert spark.loss(prediction, target, active).item() == pytest.approx(1.0)


def test_mask_context_cleared_after_forward_and_error():
    spark = build_spark("resnet18", input_size=64, decoder_width=64)
    spark(torch.randn(1, 3, 64, 64))
    with pytest.raises(MaskNotSetError):
        _ = spark.encoder.context.active
    with pytest.raises(RuntimeError):
        spark(torch.randn(1, 4, 64, 64))  # wrong channel count fails inside the encoder
    with pytest.raises(MaskNotSetError):
        _ = spark.encoder.context.active
    with pytest.raises(MaskNotSetError):
        spark.encoder.model(torch.randn(1, 3, 64, 64))  # sparse layers refuse to run without a mask


def test_two_models_do_not_share_masks():
    teacher = build_spark("resnet18", input_size=64, decoder_width=64).eval()
    student = copy.deepcopy(teacher)
    assert student.encoder.context is not teacher.encoder.context
    images = torch.randn(2, 3, 64, 64)
    mask_a = random_mask(2, 2, 2, visible=1, seed=4)
    mask_b = random_mask(2, 2, 2, visible=3, seed=5)
    with torch.no_grad():
        alone = teacher.encode(images, mask_a)
        # run the student with another mask in the middle of the teacher's forward
        handle = teacher.encoder.model.layer2.register_forward_hook(lambda *_: student.encode(images, mask_b) and None)
        interleaved = teacher.encode(images, mask_a)
        handle.remove()
    for a, b in zip(alone, interleaved):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _resnet_with(layer: nn.Module) -> nn.Module:
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    model.layer1[0].act1 = layer
    return model


class ChannelScale(nn.Module):
    """A layer type sparkmim has never seen: a learnt per-channel scale and shift (a*x+b)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.rand(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class ScaledSquaredReLU(nn.Module):
    """An activation with parameters of its own around a child activation (metaformer's StarReLU):
    ``scale * relu(x) ** 2 + bias`` writes its bias at masked positions unless it is re-masked itself."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.relu(x) ** 2 + self.bias


@pytest.mark.parametrize("layer", [nn.Sigmoid(), nn.LocalResponseNorm(2), ChannelScale(64),
                                   nn.Sequential(nn.Upsample(scale_factor=2), nn.AvgPool2d(2)),
                                   ScaledSquaredReLU()],
                         ids=["sigmoid", "local_response_norm", "affine", "upsample", "parametrised_activation"])
def test_layers_without_a_rule_are_re_masked_and_keep_the_invariants(layer):
    encoder = make_sparse_encoder(_resnet_with(layer))  # the probe passes them
    active = random_mask(BATCH, 2, 2, visible=2, seed=3)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    pixels_visible = active.repeat_interleave(32, 2).repeat_interleave(32, 3)
    altered = torch.where(pixels_visible, images, torch.randn_like(images) * 5)
    outputs, handles = capture_layer_outputs(encoder.model)
    try:
        encoder.eval()
        with torch.no_grad():
            first, second = encoder(images, active), encoder(altered, active)
    finally:
        for handle in handles:
            handle.remove()
    output, channels_last = outputs["layer1.0.act1"]
    assert torch.count_nonzero(masked_part(output, channels_last, active)) == 0
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_leaf_computing_spatial_statistics_is_refused_by_the_probe():
    with pytest.raises(UnsupportedLayerError, match=r"'layer1\.0\.act1' .*InstanceNorm2d.*change with the number of masked"):
        make_sparse_encoder(_resnet_with(nn.InstanceNorm2d(64)))


def test_a_map_off_the_mask_grid_is_refused_with_its_sizes():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    model.layer1[0].conv1 = nn.Conv2d(64, 64, 3, padding=0)  # 'valid': the map shrinks by 2
    model.layer1[0].downsample = nn.ZeroPad2d(-1)  # crop the shortcut to match (a negative pad)
    with pytest.raises(UnsupportedLayerError, match=r"'layer1\.0\.conv1' .*does not line up with the 3x3 mask grid"):
        make_sparse_encoder(model)


@pytest.mark.parametrize("kwargs,message", [
    (dict(encoder="resnet18", input_size=70), "not a multiple of the encoder's total stride 32"),
    (dict(encoder="resnet18", mask_ratio=1.0), "mask ratio must be strictly between 0 and 1"),
    (dict(encoder="resnet18", input_size=32), "leaves 0 of the 1x1 = 1 patches visible"),
    (dict(encoder="resnet18", input_size=0), "input size 0x0 is not a positive multiple"),
    (dict(encoder="resnet18", input_size=64.0), r"input_size must be an integer or \(height, width\) integers, got 64\.0"),
    (dict(encoder="resnet18", input_size=64, mask_ratio=0.1), "leaves 4 of the 2x2 = 4 patches visible"),
    (dict(encoder="no_such_net_xyz"), "unknown timm model 'no_such_net_xyz'"),
])
def test_build_errors_are_actionable(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_spark(**kwargs)


def test_weights_are_shared_with_the_timm_model():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    bn_weight = model.bn1.weight
    encoder = make_sparse_encoder(model)
    assert isinstance(encoder.model.bn1, SparseBatchNorm2d)
    assert encoder.model.bn1.weight is bn_weight


class InlineGlobalGate(nn.Module):
    """An attention block sparkmim has no rule for: it pools over all positions in its own forward."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * torch.sigmoid(y.mean((2, 3), keepdim=True))


def test_probe_names_a_block_with_inline_global_statistics():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    model.layer2[0].se = InlineGlobalGate(128)  # timm's BasicBlock calls .se when set
    with pytest.raises(UnsupportedLayerError, match=r"'layer2\.0\.se' .*InlineGlobalGate.*change with the number of masked"):
        make_sparse_encoder(model)


class InlineSqueezeExcite(nn.Module):
    """Squeeze-excitation written inline, with no timm class: ``x * sigmoid(W mean(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def test_inline_channel_attention_gets_the_visible_mean_rule():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    model.layer2[0].se = InlineSqueezeExcite(128)
    encoder = make_sparse_encoder(model)  # the probe flags it, the channel-attention rule fixes it
    assert len(encoder.model.layer2[0].se._forward_pre_hooks) == 1  # the visible-mean scaling
    images, active = torch.randn(1, 3, SIZE, SIZE), random_mask(1, 2, 2, visible=1, seed=4)
    keep = active.repeat_interleave(32, 2).repeat_interleave(32, 3)
    encoder.eval()
    with torch.no_grad():
        first, second = encoder(images, active), encoder(torch.where(keep, images, torch.randn_like(images)), active)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_probe_accepts_a_block_with_a_rule():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    from timm.layers.squeeze_excite import SEModule
    model.layer2[0].se = SEModule(128)
    make_sparse_encoder(model)  # the same gating, but through a layer type with a visible-mean rule


def test_the_setting_rules_live_in_the_core_and_say_what_would_work():
    from sparkmim.model.settings import InputSizeError, SparKSettingError, check_input_size, check_mask_ratio
    from sparkmim.utils.errors import UserError

    with pytest.raises(InputSizeError) as caught:
        check_input_size(90, 200, 32)
    assert caught.value.suggestion == (96, 192) and caught.value.stride == 32
    assert str(caught.value).endswith("use e.g. 96x192")
    check_input_size(64, 96, 32)
    for ratio in (0.0, 1.0, -0.1):
        with pytest.raises(SparKSettingError, match="strictly between 0 and 1"):
            check_mask_ratio(ratio)
    spark = build_spark("resnet18", input_size=64)  # a 2x2 grid: fine; a smaller image has 1 patch
    with pytest.raises(SparKSettingError, match="leaves 0 of the 1x1 = 1 patches visible"):
        spark(torch.randn(1, 3, 32, 32))
    assert issubclass(SparKSettingError, UserError) and issubclass(SparKSettingError, ValueError)
