"""``spark-convert --check``: load a converted file into the target framework's model.

A key report proves that every source key went somewhere; this proves the destination model accepts
the result (names and shapes). Frameworks are imported lazily: when one is missing the check is
skipped with the reason, never failed."""
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from sparkmim.convert import KeyAccountingError, load_state_dict_checked

from sparkmim.convert.formats import OPTIONAL_PREFIXES


@dataclass
class CheckResult:
    status: str   # "ok", "skipped" or "failed"
    message: str


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_timm(encoder: Mapping[str, torch.Tensor], model: str,
               model_kwargs: Optional[Mapping[str, Any]] = None) -> CheckResult:
    """Load into ``timm.create_model(model)``; only the classifier may stay missing."""
    import timm

    net = timm.create_model(model, pretrained=False, **dict(model_kwargs or {}))
    try:
        load_state_dict_checked(net, encoder, f"weights for {model}",
                                allowed_missing=OPTIONAL_PREFIXES)
    except KeyAccountingError as error:
        return CheckResult("failed", str(error))
    missing = sorted(k for k in net.state_dict() if k not in encoder)
    return CheckResult("ok", f"loaded into timm {model}; missing only: {', '.join(missing) or 'nothing'}")


def _d2_depth(model: str) -> Optional[int]:
    match = re.fullmatch(r"resnet(50|101|152)", model)
    return int(match[1]) if match else None


def check_d2(pkl_path: Path, model: str) -> CheckResult:
    """Build Detectron2's Mask R-CNN R{depth}-FPN (the shipped config) and load the ``.pkl``; every
    backbone tensor must come from the file."""
    if not installed("detectron2"):
        return CheckResult("skipped", "Detectron2 is not installed (install it from source, see the "
                                      "Detectron2 guide); the converted file was not loaded")
    depth = _d2_depth(model)
    if depth is None:
        return CheckResult("skipped", f"no shipped Mask R-CNN config for {model} (resnet50/101/152 have one)")
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from sparkmim.downstream_d2.config import add_spark_config, resolve_config_file

    cfg = get_cfg()
    add_spark_config(cfg)
    cfg.merge_from_file(str(resolve_config_file(f"mask_rcnn_R_{depth}_FPN_1x")))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
                         "MODEL.ROI_BOX_HEAD.NORM", "BN", "MODEL.ROI_MASK_HEAD.NORM", "BN"])
    net = build_model(cfg)
    prefix = "backbone.bottom_up."
    before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(prefix)}
    DetectionCheckpointer(net).load(str(pkl_path))
    from sparkmim.tools.pkl_files import load_numpy_pickle

    stored = load_numpy_pickle(pkl_path)["model"]
    missing = sorted(k[len(prefix):] for k in before if k[len(prefix):] not in stored)
    after = net.state_dict()
    unchanged = sorted(k[len(prefix):] for k in before if k[len(prefix):] in stored
                       and not torch.equal(after[k].cpu(), torch.as_tensor(stored[k[len(prefix):]])))
    if missing or unchanged:
        return CheckResult("failed", f"Detectron2 Mask R-CNN R{depth}: backbone keys missing from the file: "
                                     f"{missing[:8]}; not loaded as stored: {unchanged[:8]}")
    return CheckResult("ok", f"loaded into Detectron2 Mask R-CNN R{depth}-FPN: all {len(before)} backbone "
                             "tensors come from the file")


# timm ConvNeXt (V2) names -> mmpretrain's ConvNeXt arch: the same sizes under the same names, V2 with GRN
MMPRETRAIN_ARCH = re.compile(r"convnext(v2)?_(atto|femto|pico|nano|tiny|small|base|large|xlarge|huge)$")


def check_mmdet(converted: Dict[str, torch.Tensor], model: str) -> CheckResult:
    """Load into mmpretrain's ConvNeXt backbone (what the mmdet Mask R-CNN configs use)."""
    if not installed("mmpretrain"):
        return CheckResult("skipped", "mmpretrain/mmdet are not installed (they live in the pinned detection "
                                      "environment, see the MMDetection guide); the converted file was not loaded")
    found = MMPRETRAIN_ARCH.match(model)
    if found is None:
        return CheckResult("skipped", f"no mmpretrain ConvNeXt arch for {model}")
    from mmpretrain.models import ConvNeXt

    arch, v2 = found.group(2), bool(found.group(1))
    # V2: global response norm instead of layer scale (mmpretrain's ConvNeXt-V2 settings)
    backbone = ConvNeXt(arch=arch, out_indices=(0, 1, 2, 3), gap_before_final_norm=False, use_grn=v2,
                        **({"layer_scale_init_value": 0.0} if v2 else {}))
    state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in converted.items()}
    result = backbone.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if unexpected or any(not k.startswith("norm") for k in missing):
        return CheckResult("failed", f"mmpretrain ConvNeXt-{arch}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    note = f" (per-stage output norms {', '.join(sorted({k.split('.')[0] for k in missing}))} start fresh)" if missing else ""
    return CheckResult("ok", f"loaded into mmpretrain ConvNeXt-{arch}{note}")
