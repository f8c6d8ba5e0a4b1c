"""Converted ConvNeXt weights against the real mmpretrain backbone and mmdet's Pretrained init."""
import pytest
import torch

pytest.importorskip("mmdet", reason="mmdet is not installed: the MMDetection tests run in the detection "
                                    "environment (bash scripts/setup_mmdet_env.sh && bash scripts/run_mmdet_tests.sh)")
pytest.importorskip("mmpretrain", reason="mmpretrain is not installed (see scripts/setup_mmdet_env.sh)")

from sparkmim.convert import convnext_timm_to_fb  # noqa: E402
from sparkmim.convert.mmdet import convert_object, write_checkpoint  # noqa: E402
from sparkmim.downstream_mmdet.settings import CONFIG_DIR  # noqa: E402
from tests.downstream_mmdet.mmdet_fixtures import (PACKAGED_B, TINY_DEPTHS, TINY_DIMS, expected_backbone_keys,  # noqa: E402
                                                 small_config, tiny_timm_convnext)


def mmpretrain_convnext(**kwargs):
    from mmpretrain.models import ConvNeXt

    return ConvNeXt(arch=dict(depths=list(TINY_DEPTHS), channels=list(TINY_DIMS)), out_indices=(0, 1, 2, 3),
                    gap_before_final_norm=False, **kwargs)


@pytest.mark.parametrize("layout", ["timm", "facebookresearch"])
def test_every_key_lands_on_the_mmpretrain_backbone(layout):
    source = tiny_timm_convnext().state_dict()
    obj = source if layout == "timm" else {"model": convnext_timm_to_fb(source)[0]}
    conversion = convert_object(obj)
    target = mmpretrain_convnext(layer_scale_init_value=1.0).state_dict()
    assert sorted(conversion.backbone) == expected_backbone_keys(target)
    for key, value in conversion.backbone.items():
        assert value.shape == target[key].shape, key
    assert sorted(conversion.dropped) == ["head.fc.bias", "head.fc.weight"]
    assert len(conversion.renamed) + len(conversion.dropped) == len(source)  # every source key accounted for


def test_convnext_v2_grn_matches_mmpretrain():
    from timm.models.convnext import ConvNeXt

    source = ConvNeXt(depths=TINY_DEPTHS, dims=TINY_DIMS, use_grn=True, ls_init_value=None).state_dict()
    conversion = convert_object(source)
    target = mmpretrain_convnext(use_grn=True, layer_scale_init_value=0.0).state_dict()
    assert sorted(conversion.backbone) == expected_backbone_keys(target)
    for key, value in conversion.backbone.items():
        assert value.shape == target[key].shape, key


def test_init_weights_loads_the_converted_file(tmp_path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    source = tiny_timm_convnext()
    conversion = convert_object(source.state_dict())
    weights = write_checkpoint(conversion, tmp_path / "backbone.pth")
    cfg = Config.fromfile(str(small_config(tmp_path / "cfg.py", CONFIG_DIR / PACKAGED_B)))
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(weights), prefix="backbone.")
    init_default_scope("mmdet")
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    loaded = detector.backbone.state_dict()
    for key, value in conversion.backbone.items():
        assert torch.equal(loaded[key], value), key
    timm_state = source.state_dict()
    assert torch.equal(loaded["stages.2.1.depthwise_conv.weight"], timm_state["stages.2.blocks.1.conv_dw.weight"])
    assert torch.equal(loaded["norm3.weight"], timm_state["head.norm.weight"])
    for index in range(3):  # the output norms detection adds start fresh
        assert torch.equal(loaded[f"norm{index}.weight"], torch.ones(TINY_DIMS[index]))
        assert torch.equal(loaded[f"norm{index}.bias"], torch.zeros(TINY_DIMS[index]))


@pytest.mark.parametrize("model", ["convnext_atto", "convnextv2_atto"])
def test_check_loads_every_mmpretrain_size_and_convnext_v2(model, tmp_path, capsys):
    # --check knew only tiny to xlarge: atto-to-nano and V2 (GRN) files were written but reported unchecked
    import timm

    from sparkmim.tools.convert import main

    torch.save(timm.create_model(model).state_dict(), tmp_path / "encoder.pth")
    assert main([str(tmp_path / "encoder.pth"), str(tmp_path / "backbone.pth"), "--to", "mmdet", "--check"]) == 0
    assert "check      ok: loaded into mmpretrain ConvNeXt-atto" in capsys.readouterr().out
