"""ConvNeXt -> mmpretrain (MMDetection 3.x) conversion; runs without mmdet."""
import re
from typing import List, Sequence

import pytest
import timm
import torch

from sparkmim.convert import KeyAccountingError, convnext_timm_to_fb
from sparkmim.downstream_mmdet import convert
from sparkmim.convert.mmdet import convert_object, is_converted, timm_convnext_to_mmpretrain

ATTO_DEPTHS = (2, 2, 6, 2)


def expected_mmpretrain_keys(depths: Sequence[int], grn: bool = False, final_norm: bool = True) -> List[str]:
    """mmpretrain ConvNeXt backbone keys, written out from its module layout (no output norms but norm3)."""
    keys = ["downsample_layers.0.0.weight", "downsample_layers.0.0.bias",
            "downsample_layers.0.1.weight", "downsample_layers.0.1.bias"]
    for stage, depth in enumerate(depths):
        if stage > 0:
            keys += [f"downsample_layers.{stage}.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
        for block in range(depth):
            prefix = f"stages.{stage}.{block}"
            for module in ("depthwise_conv", "norm", "pointwise_conv1", "pointwise_conv2"):
                keys += [f"{prefix}.{module}.weight", f"{prefix}.{module}.bias"]
            keys += [f"{prefix}.grn.gamma", f"{prefix}.grn.beta"] if grn else [f"{prefix}.gamma"]
    if final_norm:
        keys += ["norm3.weight", "norm3.bias"]
    return keys


@pytest.fixture(scope="module")
def atto_state():
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False).state_dict()


def test_timm_keys_match_mmpretrain_layout(atto_state):
    conversion = timm_convnext_to_mmpretrain(atto_state)
    assert sorted(conversion.backbone) == sorted(expected_mmpretrain_keys(ATTO_DEPTHS))
    assert conversion.dropped == ["head.fc.weight", "head.fc.bias"]
    assert len(conversion.renamed) + len(conversion.dropped) == len(atto_state)  # every key accounted for
    assert any("norm0, norm1, norm2" in note for note in conversion.notes)


def test_values_are_identical(atto_state):
    conversion = timm_convnext_to_mmpretrain(atto_state)
    pairs = {"stem.0.weight": "downsample_layers.0.0.weight", "stem.1.bias": "downsample_layers.0.1.bias",
             "stages.2.downsample.1.weight": "downsample_layers.2.1.weight",
             "stages.2.blocks.5.conv_dw.weight": "stages.2.5.depthwise_conv.weight",
             "stages.3.blocks.1.mlp.fc2.bias": "stages.3.1.pointwise_conv2.bias",
             "stages.0.blocks.0.gamma": "stages.0.0.gamma", "head.norm.weight": "norm3.weight"}
    for timm_key, mm_key in pairs.items():
        assert conversion.renamed[timm_key] == mm_key
    for timm_key, mm_key in conversion.renamed.items():
        source = atto_state[timm_key]  # convnext_atto is timm's conv_mlp variant: 1x1 convs -> Linear
        expected = source.flatten(1) if ".mlp.fc" in timm_key and source.dim() == 4 else source
        assert torch.equal(conversion.backbone[mm_key], expected)


def test_facebookresearch_layout_gives_the_same_file(atto_state):
    fb_state, _ = convnext_timm_to_fb(atto_state)
    assert "downsample_layers.0.0.weight" in fb_state and "head.weight" in fb_state
    from_fb = convert_object({"model": fb_state})  # the reference official_style files nest under 'model'
    from_timm = convert_object(atto_state)
    assert sorted(from_fb.backbone) == sorted(from_timm.backbone)
    for key, value in from_timm.backbone.items():
        assert torch.equal(from_fb.backbone[key], value)
    assert sorted(from_fb.dropped) == ["head.fc.bias", "head.fc.weight"]


def test_full_pretraining_checkpoint_drops_the_decoder(atto_state):
    spark_state = {f"encoder.model.{k}": v for k, v in atto_state.items()}
    spark_state.update({"decoder.final.weight": torch.zeros(3, 8, 1, 1), "mask_tokens.0": torch.zeros(1, 8, 1, 1)})
    conversion = convert_object({"model": spark_state, "epoch": 3})
    assert sorted(conversion.backbone) == sorted(expected_mmpretrain_keys(ATTO_DEPTHS))
    assert {"decoder.final.weight", "mask_tokens.0", "head.fc.weight"} <= set(conversion.dropped)


def test_final_norm_can_be_dropped(atto_state):
    conversion = timm_convnext_to_mmpretrain(atto_state, final_norm="drop")
    assert sorted(conversion.backbone) == sorted(expected_mmpretrain_keys(ATTO_DEPTHS, final_norm=False))
    assert "head.norm.weight" in conversion.dropped
    assert len(conversion.renamed) + len(conversion.dropped) == len(atto_state)
    with pytest.raises(ValueError, match="final_norm"):
        timm_convnext_to_mmpretrain(atto_state, final_norm="norm0")


def test_convnext_v2_grn_is_flattened():
    state = timm.create_model("convnextv2_atto", pretrained=False).state_dict()
    conversion = timm_convnext_to_mmpretrain(state)
    assert sorted(conversion.backbone) == sorted(expected_mmpretrain_keys(ATTO_DEPTHS, grn=True))
    assert conversion.backbone["stages.1.0.grn.gamma"].shape == (4 * 80,)


def test_unknown_key_is_an_error(atto_state):
    state = dict(atto_state)
    state["stages.1.blocks.0.extra.weight"] = torch.zeros(2)
    with pytest.raises(KeyAccountingError, match=r"stages\.1\.blocks\.0\.extra\.weight"):
        timm_convnext_to_mmpretrain(state)


def test_a_resnet_is_refused():
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    with pytest.raises(KeyAccountingError, match="conv1.weight"):
        convert_object(state)


def test_cli_writes_a_backbone_file(tmp_path, atto_state, capsys):
    source, target = tmp_path / "encoder.pth", tmp_path / "out" / "backbone.pth"
    torch.save(atto_state, source)
    assert convert.main([str(source), str(target)]) == 0
    written = torch.load(target, map_location="cpu", weights_only=True)
    assert is_converted(written)
    assert all(k.startswith("backbone.") for k in written["state_dict"])
    assert torch.equal(written["state_dict"]["backbone.stages.1.0.pointwise_conv1.weight"],
                       atto_state["stages.1.blocks.0.mlp.fc1.weight"].flatten(1))
    assert re.search(r"dropped\s+2 keys", capsys.readouterr().out)
    assert not is_converted(atto_state)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    source = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), source)
    assert convert.main([str(source), str(tmp_path / "out.pth")]) == 2
    assert convert.main([str(tmp_path / "missing.pth"), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("spark-mmdet-convert: error:") for line in err)
    assert not (tmp_path / "out.pth").exists()

