"""The shipped Detectron2 configs, read as plain YAML data (runs without Detectron2)."""
import ast
from pathlib import Path

import pytest
import yaml

from sparkmim.downstream_d2.config import available_configs, config_dir, resolve_config_file

CONFIGS = {f"mask_rcnn_R_{d}_FPN_{s}": (d, s) for d in (50, 101, 152) for s in ("1x", "2x")}


def merged(path: Path) -> dict:
    """The config with its _BASE_ chain merged in, as Detectron2 does (later files win)."""
    data = yaml.safe_load(path.read_text())
    base = data.pop("_BASE_", None)
    result = merged(path.parent / base) if base else {}

    def update(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                update(into[key], value)
            else:
                into[key] = value
    update(result, data)
    return result


def literal(value):
    return ast.literal_eval(value) if isinstance(value, str) else value


def test_shipped_configs_are_listed():
    assert available_configs() == sorted(CONFIGS)
    assert resolve_config_file("mask_rcnn_R_50_FPN_1x") == config_dir() / "mask_rcnn_R_50_FPN_1x.yaml"
    assert resolve_config_file("mask_rcnn_R_101_FPN_2x.yaml").is_file()
    with pytest.raises(FileNotFoundError, match="shipped: mask_rcnn_R_101_FPN_1x"):
        resolve_config_file("mask_rcnn_R_34_FPN_1x")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_paper_transfer_settings(name):
    depth, schedule = CONFIGS[name]
    cfg = merged(resolve_config_file(name))
    model, solver = cfg["MODEL"], cfg["SOLVER"]
    assert model["RESNETS"]["DEPTH"] == depth
    assert model["MASK_ON"] is True
    assert model["BACKBONE"] == {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0}
    assert model["RESNETS"]["STRIDE_IN_1X1"] is False
    for part in ("RESNETS", "FPN", "ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        assert model[part]["NORM"] == "SyncBN", part
    assert (model["ROI_BOX_HEAD"]["NUM_CONV"], model["ROI_BOX_HEAD"]["NUM_FC"]) == (4, 1)
    assert model["ROI_MASK_HEAD"]["NUM_CONV"] == 4
    assert cfg["INPUT"]["FORMAT"] == "RGB"
    assert model["PIXEL_MEAN"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert model["PIXEL_STD"] == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255])
    assert literal(cfg["INPUT"]["MIN_SIZE_TRAIN"]) == tuple(range(480, 897, 32))
    assert cfg["INPUT"]["MIN_SIZE_TEST"] == 800
    assert solver["OPTIMIZER"] == "ADAMW" and solver["LR_DECAY"] == 0.6
    assert (solver["BASE_LR"], solver["WEIGHT_DECAY"], solver["GAMMA"]) == (2.5e-4, 1e-4, 0.25)
    assert (solver["WARMUP_ITERS"], solver["WARMUP_FACTOR"], solver["IMS_PER_BATCH"]) == (1000, 0.01, 16)
    iters = {"1x": ((60000, 80000), 90000), "2x": ((120000, 160000), 180000)}[schedule]
    assert (literal(solver["STEPS"]), solver["MAX_ITER"]) == iters
    assert cfg["TEST"]["PRECISE_BN"]["ENABLED"] is True
