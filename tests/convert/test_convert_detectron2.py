"""timm ResNet -> Detectron2 .pkl conversion (the key table, and the spark-d2-convert alias; no Detectron2 needed)."""
import pickle
from typing import List, Sequence

import numpy as np
import pytest
import timm
import torch

from sparkmim.downstream_d2 import convert
from sparkmim.convert import KeyAccountingError
from sparkmim.convert.detectron2 import timm_resnet_to_d2
from sparkmim.convert.key_rules import RefusedKeysError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_d2_keys(blocks: Sequence[int]) -> List[str]:
    """Detectron2's ResNet (bottleneck) backbone keys, written out from its module layout."""
    keys = ["stem.conv1.weight"] + [f"stem.conv1.norm.{f}" for f in BN]
    for stage, count in zip(range(2, 6), blocks):
        for block in range(count):
            prefix = f"res{stage}.{block}"
            if block == 0:
                keys += [f"{prefix}.shortcut.weight"] + [f"{prefix}.shortcut.norm.{f}" for f in BN]
            for conv in (1, 2, 3):
                keys += [f"{prefix}.conv{conv}.weight"] + [f"{prefix}.conv{conv}.norm.{f}" for f in BN]
    return keys


@pytest.fixture(scope="module")
def resnet50_state():
    torch.manual_seed(0)
    return timm.create_model("resnet50", pretrained=False).state_dict()


@pytest.mark.parametrize("name, blocks, count", [("resnet50", (3, 4, 6, 3), 318),
                                                 ("resnet101", (3, 4, 23, 3), 624)])
def test_keys_match_detectron2_layout(name, blocks, count):
    state = timm.create_model(name, pretrained=False).state_dict()
    conversion = timm_resnet_to_d2(state)
    assert sorted(conversion.model) == sorted(expected_d2_keys(blocks))
    assert len(conversion.model) == count
    assert conversion.dropped == ["fc.weight", "fc.bias"]
    assert len(conversion.renamed) + len(conversion.dropped) == len(state)  # every key accounted for


def test_values_are_identical(resnet50_state):
    conversion = timm_resnet_to_d2(resnet50_state)
    pairs = {"conv1.weight": "stem.conv1.weight", "bn1.running_var": "stem.conv1.norm.running_var",
             "layer1.0.downsample.0.weight": "res2.0.shortcut.weight",
             "layer1.0.downsample.1.bias": "res2.0.shortcut.norm.bias",
             "layer3.5.bn2.weight": "res4.5.conv2.norm.weight", "layer4.2.conv3.weight": "res5.2.conv3.weight",
             "layer2.3.bn3.num_batches_tracked": "res3.3.conv3.norm.num_batches_tracked"}
    for timm_key, d2_key in pairs.items():
        assert conversion.renamed[timm_key] == d2_key
    for timm_key, d2_key in conversion.renamed.items():
        value = conversion.model[d2_key]
        assert isinstance(value, np.ndarray)
        assert value.dtype == resnet50_state[timm_key].numpy().dtype
        np.testing.assert_array_equal(value, resnet50_state[timm_key].numpy())


def test_bfloat16_becomes_float32(resnet50_state):
    half = {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in resnet50_state.items()}
    value = timm_resnet_to_d2(half).model["stem.conv1.weight"]
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, half["conv1.weight"].float().numpy())


def test_encoder_only_checkpoint_has_nothing_dropped(resnet50_state):
    encoder = {k: v for k, v in resnet50_state.items() if not k.startswith("fc.")}
    conversion = timm_resnet_to_d2(encoder)
    assert conversion.dropped == [] and len(conversion.model) == 318


@pytest.mark.parametrize("model_name, message", [("resnet50d", "deep stem"), ("resnet26d", "deep stem")])
def test_deep_stem_is_refused(model_name, message):
    with pytest.raises(RefusedKeysError, match=message):
        timm_resnet_to_d2(timm.create_model(model_name, pretrained=False).state_dict())


def test_avg_down_shortcut_is_refused(resnet50_state):
    # a ResNet-D shortcut (AvgPool, conv, BN) on an otherwise plain stem
    state = timm.create_model("resnet50", pretrained=False, avg_down=True).state_dict()
    with pytest.raises(RefusedKeysError, match=r"average-pool shortcut.*layer1\.0\.downsample\.2\."):
        timm_resnet_to_d2(state)


def test_unknown_key_is_named(resnet50_state):
    state = dict(resnet50_state, **{"layer2.0.se.fc1.weight": torch.zeros(1)})
    with pytest.raises(KeyAccountingError, match=r"unknown keys.*layer2\.0\.se\.fc1\.weight"):
        timm_resnet_to_d2(state)


def test_not_a_resnet_is_refused():
    state = timm.create_model("convnext_atto", pretrained=False).state_dict()
    with pytest.raises(KeyAccountingError, match="unknown keys"):
        timm_resnet_to_d2(state)
    with pytest.raises(RefusedKeysError, match="stem"):
        timm_resnet_to_d2({})


def test_cli_writes_a_detectron2_pkl(tmp_path, resnet50_state, capsys):
    source = tmp_path / "resnet50_1kpretrained_timm_style.pth"
    torch.save({"module": {f"module.{k}": v for k, v in resnet50_state.items()}}, source)
    target = tmp_path / "r50.pkl"
    assert convert.main([str(source), str(target)]) == 0
    with open(target, "rb") as handle:
        data = pickle.load(handle, encoding="latin1")  # the way Detectron2 reads it
    assert data["__author__"] and data["matching_heuristics"] is True
    assert len(data["model"]) == 318
    np.testing.assert_array_equal(data["model"]["res4.5.conv2.weight"], resnet50_state["layer3.5.conv2.weight"].numpy())
    out = capsys.readouterr().out
    assert "318" in out and "fc.weight" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    source = tmp_path / "d.pth"
    torch.save(timm.create_model("resnet26d", pretrained=False).state_dict(), source)
    assert convert.main([str(source), str(tmp_path / "x.pkl")]) == 2
    assert convert.main([str(tmp_path / "missing.pth"), str(tmp_path / "x.pkl")]) == 2
    assert convert.main([str(source), str(tmp_path / "x.pth")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("spark-d2-convert: error:") for line in errors)
    assert "deep stem" in errors[0] and "not found" in errors[1] and "'.pkl'" in errors[2]
    assert not (tmp_path / "x.pkl").exists()


def test_cli_reads_a_full_pretraining_checkpoint(tmp_path, capsys):
    """Our full SparK checkpoint: the encoder is converted, the decoder and densify layers dropped."""
    from sparkmim import build_spark

    torch.manual_seed(0)
    spark = build_spark("resnet50", input_size=64)
    source = tmp_path / "checkpoint.pth"
    torch.save({"model": spark.state_dict(), "epoch": 1}, source)
    target = tmp_path / "r50.pkl"
    assert convert.main([str(source), str(target)]) == 0
    with open(target, "rb") as handle:
        model = pickle.load(handle)["model"]
    encoder = spark.encoder.model.state_dict()
    assert len(model) == 318
    np.testing.assert_array_equal(model["res5.2.conv3.norm.running_var"], encoder["layer4.2.bn3.running_var"].numpy())
    assert "decoder." in capsys.readouterr().out


def test_error_is_a_key_accounting_error():
    with pytest.raises(KeyAccountingError):
        timm_resnet_to_d2({"conv1.weight": torch.zeros(1), "attnpool.proj.weight": torch.zeros(1)})
