"""Initial weights for fine-tuning: every supported source format loads with every key accounted
for (only the classifier left to train); anything else missing or left over is an error naming it."""
import argparse

import pytest
import timm
import torch

from sparkmim.convert import convnext_timm_to_fb
from sparkmim.downstream_imagenet.models import create_classifier, create_linear_probe
from sparkmim.downstream_imagenet.weights import WeightLoadingError, load_pretrained
from sparkmim.utils.checkpoint import UnsafeCheckpointError

RESNET_KWARGS = {"channels": [8, 16, 32, 64]}
CONVNEXT_KWARGS = {"depths": [1, 1, 2, 1], "dims": [8, 16, 32, 64]}


def encoder_state(name, kwargs):
    """Our encoder-only format: the timm model without classifier."""
    torch.manual_seed(1)
    return timm.create_model(name, num_classes=0, global_pool="", **kwargs).state_dict()


def assert_loaded(model, source, skip=()):
    state = model.state_dict()
    for key, value in source.items():
        if key not in skip:
            assert torch.equal(state[key], value), key


def test_encoder_only_checkpoint(tmp_path):
    source = encoder_state("resnet18", RESNET_KWARGS)
    torch.save(source, tmp_path / "encoder.pth")
    model = create_classifier("resnet18", 4, 0.0, RESNET_KWARGS)
    report = load_pretrained(model, tmp_path / "encoder.pth")
    assert report.classifier_missing == ["fc.bias", "fc.weight"]
    assert report.loaded == len(source)
    assert_loaded(model, source)


def test_full_pretraining_checkpoint_drops_decoder(tmp_path):
    from sparkmim import build_spark

    spark = build_spark("resnet18", input_size=64, decoder_width=32, encoder_kwargs=RESNET_KWARGS)
    full = {"model": spark.state_dict(), "epoch": 3, "config": {"model": "resnet18"}}
    torch.save(full, tmp_path / "full.pth")
    model = create_classifier("resnet18", 4, 0.0, RESNET_KWARGS)
    report = load_pretrained(model, tmp_path / "full.pth")
    assert report.classifier_missing == ["fc.bias", "fc.weight"]
    assert any(k.startswith("decoder.") for k in report.dropped_by_converter)
    assert_loaded(model, spark.encoder.model.state_dict())


def test_reference_timm_style_resnet_with_classifier(tmp_path):
    # *_1kpretrained_timm_style.pth: timm names; a classifier in the file is dropped, not loaded
    source = timm.create_model("resnet18", num_classes=1000, **RESNET_KWARGS).state_dict()
    torch.save(source, tmp_path / "res18_1kpretrained_timm_style.pth")
    model = create_classifier("resnet18", 4, 0.0, RESNET_KWARGS)
    report = load_pretrained(model, tmp_path / "res18_1kpretrained_timm_style.pth")
    assert report.classifier_missing == ["fc.bias", "fc.weight"]
    assert_loaded(model, source, skip=("fc.weight", "fc.bias"))


@pytest.mark.parametrize("wrapper", [None, "module", "model"])
def test_reference_official_style_convnext(tmp_path, wrapper):
    timm_state = encoder_state("convnext_atto", CONVNEXT_KWARGS)
    fb_state = convnext_timm_to_fb(timm_state)
    fb_state = fb_state[0] if isinstance(fb_state, tuple) else fb_state
    assert any(k.startswith("downsample_layers.") for k in fb_state)
    obj = fb_state if wrapper is None else {wrapper: fb_state}
    torch.save(obj, tmp_path / "convnextS_1kpretrained_official_style.pth")
    model = create_classifier("convnext_atto", 4, 0.0, CONVNEXT_KWARGS)
    report = load_pretrained(model, tmp_path / "convnextS_1kpretrained_official_style.pth")
    assert report.classifier_missing == ["head.fc.bias", "head.fc.weight"]
    assert_loaded(model, timm_state)


def test_torchvision_convnext_weights(tmp_path):
    # spark-convert recognised them; spark-finetune refused them with a list of 180 unknown keys
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.convnext_tiny().state_dict()
    torch.save(source, tmp_path / "torchvision_convnext_tiny.pth")
    model = create_classifier("convnext_tiny", 4, 0.0, {})
    report = load_pretrained(model, tmp_path / "torchvision_convnext_tiny.pth")
    assert report.classifier_missing == ["head.fc.bias", "head.fc.weight"]
    assert torch.equal(model.stem[0].weight, source["features.0.0.weight"])
    assert torch.equal(model.head.norm.weight, source["classifier.0.weight"])


def test_reference_convnext_encoder_without_the_classifier_side_norm(tmp_path):
    # the reference pre-trains ConvNeXt without its final norm, so its released encoders lack it (timm head.norm,
    # facebookresearch norm): the classifier's own norm starts from its initialisation, like its fc
    timm_state = encoder_state("convnext_atto", CONVNEXT_KWARGS)
    fb_state = convnext_timm_to_fb(timm_state)
    fb_state = fb_state[0] if isinstance(fb_state, tuple) else fb_state
    fb_state = {k: v for k, v in fb_state.items() if not k.startswith("norm.")}
    torch.save(fb_state, tmp_path / "convnextS_1kpretrained_official_style.pth")
    model = create_classifier("convnext_atto", 4, 0.0, CONVNEXT_KWARGS)
    report = load_pretrained(model, tmp_path / "convnextS_1kpretrained_official_style.pth")
    assert report.classifier_missing == ["head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight"]
    assert_loaded(model, {k: v for k, v in timm_state.items() if not k.startswith("head.norm.")})
    assert torch.equal(model.head.norm.weight, torch.ones(64)) and torch.equal(model.head.norm.bias, torch.zeros(64))


def test_reference_spark_style_with_decoder(tmp_path):
    # *_withdecoder_1kpretrained_spark_style.pth: the whole reference model plus a config entry
    encoder = encoder_state("resnet18", RESNET_KWARGS)
    reference = {f"sparse_encoder.sp_cnn.{k}": v for k, v in encoder.items()}
    reference.update({"dense_decoder.proj.weight": torch.zeros(3, 8, 1, 1), "mask_tokens.0": torch.zeros(1, 64, 1, 1),
                      "densify_norms.0.weight": torch.ones(64), "imn_m": torch.zeros(1, 3, 1, 1)})
    torch.save({"module": reference, "config": {"arch": "resnet18"}, "is_pretrain": True},
               tmp_path / "res18_withdecoder_1kpretrained_spark_style.pth")
    model = create_classifier("resnet18", 4, 0.0, RESNET_KWARGS)
    report = load_pretrained(model, tmp_path / "res18_withdecoder_1kpretrained_spark_style.pth")
    assert report.classifier_missing == ["fc.bias", "fc.weight"]
    assert "dense_decoder.proj.weight" in report.dropped_by_converter
    assert_loaded(model, encoder)


def test_linear_probe_backbone_takes_the_encoder(tmp_path):
    source = encoder_state("resnet18", RESNET_KWARGS)
    torch.save(source, tmp_path / "encoder.pth")
    probe = create_linear_probe("resnet18", 4, RESNET_KWARGS)
    report = load_pretrained(probe.backbone, tmp_path / "encoder.pth")
    assert report.classifier_missing == []
    assert_loaded(probe.backbone, source)
    assert not any(p.requires_grad for p in probe.backbone.parameters())
    assert isinstance(probe.head[0], torch.nn.BatchNorm1d) and not probe.head[0].affine


def test_missing_backbone_key_is_named(tmp_path):
    source = encoder_state("resnet18", RESNET_KWARGS)
    del source["layer3.1.conv2.weight"]
    torch.save(source, tmp_path / "partial.pth")
    with pytest.raises(WeightLoadingError, match=r"missing from the weights: layer3\.1\.conv2\.weight"):
        load_pretrained(create_classifier("resnet18", 4, 0.0, RESNET_KWARGS), tmp_path / "partial.pth")


def test_unexpected_key_is_named(tmp_path):
    source = encoder_state("resnet18", RESNET_KWARGS)
    source["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(source, tmp_path / "extra.pth")
    with pytest.raises(WeightLoadingError, match=r"not in the model: layer5\.0\.conv1\.weight"):
        load_pretrained(create_classifier("resnet18", 4, 0.0, RESNET_KWARGS), tmp_path / "extra.pth")


def test_wrong_architecture_is_a_shape_error(tmp_path):
    torch.save(encoder_state("resnet18", {"channels": [8, 16, 32, 128]}), tmp_path / "wide.pth")
    with pytest.raises(WeightLoadingError, match=r"shape mismatch .*layer4"):
        load_pretrained(create_classifier("resnet18", 4, 0.0, RESNET_KWARGS), tmp_path / "wide.pth")


def test_weights_of_another_architecture_name_the_model_to_give(tmp_path):
    # a ConvNeXt encoder given to a ResNet failed with 40 key names and no hint of what the weights are
    torch.save(encoder_state("convnext_atto", {}), tmp_path / "convnext.pth")
    with pytest.raises(WeightLoadingError, match=r"the pre-trained weights are a timm 'convnext_atto' encoder "
                                                 r"\(by their blocks and widths\), the model is 'resnet18': "
                                                 r"give --model convnext_atto \(missing from the weights: ") as error:
        load_pretrained(create_classifier("resnet18", 4, 0.0, RESNET_KWARGS), tmp_path / "convnext.pth")
    assert len(str(error.value)) < 500


def test_code_carrying_file_is_refused(tmp_path):
    # a torch.save file holding an object that is not a tensor container: loading it needs full unpickling
    torch.save({"model": encoder_state("resnet18", RESNET_KWARGS), "args": argparse.Namespace(lr=0.1)},
               tmp_path / "unsafe.pth")
    with pytest.raises(UnsafeCheckpointError):
        load_pretrained(create_classifier("resnet18", 4, 0.0, RESNET_KWARGS), tmp_path / "unsafe.pth")
    report = load_pretrained(create_classifier("resnet18", 4, 0.0, RESNET_KWARGS), tmp_path / "unsafe.pth",
                             allow_unsafe=True)
    assert report.classifier_missing == ["fc.bias", "fc.weight"]


def test_a_file_without_tensors_is_a_weight_error_naming_it(tmp_path):
    torch.save({"model": {}, "epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(WeightLoadingError, match=r"empty\.pth: no state dict found"):
        load_pretrained(create_classifier("resnet18", 4, 0.0, RESNET_KWARGS), tmp_path / "empty.pth")
