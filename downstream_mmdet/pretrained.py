"""The pretrained backbone file of a run: converted when needed, checked against the configured backbone.

mmengine's ``Pretrained`` initialiser loads with ``strict=False`` and only logs missing or
mismatched keys, so a ConvNeXt-S file given to a ConvNeXt-B config would train from a half-random
backbone. Before training, the file is therefore loaded into the configured backbone with every
key checked; only the per-stage output norms (``norm0``-``norm3``) may be absent.
"""
import logging
from pathlib import Path
from typing import Any

from sparkmim.convert import load_state_dict_checked
from sparkmim.utils.checkpoint import load_file

from sparkmim.convert.mmdet import BACKBONE_PREFIX, OUTPUT_NORMS, convert_object, is_converted, write_checkpoint

logger = logging.getLogger(__name__)

CONVERTED_NAME = "pretrained_backbone.pth"


def prepare_pretrained(source: Path, work_dir: Path, allow_unsafe: bool = False) -> Path:
    """Return a file the backbone's ``Pretrained`` init reads: ``source`` itself when it is already
    converted, else its conversion written to ``work_dir`` (every rank writes the same bytes
    atomically, so concurrent processes need no coordination)."""
    obj = load_file(source, allow_unsafe=allow_unsafe)
    if is_converted(obj):
        return Path(source)
    conversion = convert_object(obj)
    target = Path(work_dir) / CONVERTED_NAME
    write_checkpoint(conversion, target)
    logger.info("converted %s to mmpretrain names: %s (%d tensors; dropped %s)", source, target,
                len(conversion.backbone), ", ".join(conversion.dropped) or "nothing")
    return target


def check_backbone_file(backbone_cfg: Any, checkpoint: Path) -> None:
    """Load ``checkpoint`` into a backbone built from ``backbone_cfg``; raise
    :class:`~sparkmim.convert.KeyAccountingError` naming missing, unexpected or mis-shaped keys."""
    from mmdet.registry import MODELS  # lazy: mmdet lives in the detection environment only

    cfg = backbone_cfg.copy() if hasattr(backbone_cfg, "copy") else dict(backbone_cfg)
    cfg.pop("init_cfg", None)
    backbone = MODELS.build(cfg)
    state = load_file(checkpoint)["state_dict"]
    weights = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    load_state_dict_checked(backbone, weights, f"pretrained backbone file {checkpoint}",
                            allowed_missing=tuple(f"{n}." for n in OUTPUT_NORMS))
