"""timm ResNet weights -> a Detectron2 ``.pkl`` backbone file.

Detectron2 names the parts of a ResNet differently from timm (``stem.conv1.norm`` for ``bn1``,
``res2`` for ``layer1``, ``shortcut`` for ``downsample.0``) and loads ``.pkl`` files carrying
``matching_heuristics`` by name suffix, so a converted key such as ``res2.0.conv1.weight`` lands on
``backbone.bottom_up.res2.0.conv1.weight`` of any ResNet-based model.

The conversion accounts for every key: each one is renamed or explicitly dropped (the classifier),
and anything else is an error that names the key. Variants Detectron2's ResNet cannot represent
(the deep 3-conv stem and the average-pool shortcut of ResNet-C/D) are refused rather than being
loaded half-way.

Usage as a command: ``spark-d2-convert SRC.pth DST.pkl`` (also
``python -m sparkmim.downstream_d2.convert``).
"""
import argparse
import logging
import pickle
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from sparkmim.convert import ConversionReport, KeyAccountingError, load_encoder_state_dict
from sparkmim.utils.checkpoint import load_file, save_atomic

logger = logging.getLogger(__name__)

AUTHOR = "sparkmim"
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
_BN = "|".join(BN_FIELDS)

# (timm pattern, Detectron2 replacement); tried in order, the first full match wins
_RULES: Tuple[Tuple["re.Pattern[str]", Any], ...] = (
    (re.compile(r"conv1\.weight"), lambda m: "stem.conv1.weight"),
    (re.compile(rf"bn1\.({_BN})"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"layer([1-4])\.(\d+)\.conv([1-3])\.weight"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(rf"layer([1-4])\.(\d+)\.bn([1-3])\.({_BN})"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"layer([1-4])\.(\d+)\.downsample\.0\.weight"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (re.compile(rf"layer([1-4])\.(\d+)\.downsample\.1\.({_BN})"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
)

# ResNet variants whose layout Detectron2's ResNet has no place for
_UNMAPPABLE: Tuple[Tuple["re.Pattern[str]", str], ...] = (
    (re.compile(r"conv1\.\d+\..*"),
     "deep stem (three 3x3 convs, ResNet-C/D): Detectron2's BasicStem has a single 7x7 conv"),
    (re.compile(r"layer[1-4]\.\d+\.downsample\.2\..*"),
     "average-pool shortcut (avg-down, ResNet-D): Detectron2's shortcut is a strided 1x1 conv"),
)


class D2ConversionError(KeyAccountingError):
    """The state dict is not a ResNet that Detectron2's ResNet can hold; the message names the keys."""


@dataclass
class D2Conversion:
    """Result of a conversion: Detectron2-named numpy arrays plus the key accounting."""

    model: Dict[str, np.ndarray]
    renamed: Dict[str, str] = field(default_factory=dict)  # timm key -> Detectron2 key
    dropped: List[str] = field(default_factory=list)  # timm keys left out on purpose (classifier)

    def report(self) -> ConversionReport:
        """The key accounting in the form every sparkmim converter reports it."""
        return ConversionReport(converted=list(self.renamed), dropped=list(self.dropped),
                                notes=["timm ResNet -> Detectron2 ResNet names"])

    def checkpoint(self) -> Dict[str, Any]:
        """The object Detectron2's ``DetectionCheckpointer`` expects inside a ``.pkl`` file."""
        return {"model": self.model, "__author__": AUTHOR, "matching_heuristics": True}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy().copy()


def _d2_name(key: str) -> Optional[str]:
    for pattern, replace in _RULES:
        match = pattern.fullmatch(key)
        if match:
            return replace(match)
    return None


def _describe(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")


def timm_resnet_to_d2(state_dict: Mapping[str, torch.Tensor]) -> D2Conversion:
    """Rename a timm ResNet state dict (``timm.create_model('resnet50').state_dict()`` naming) to
    Detectron2's ResNet naming and convert the values to numpy, accounting for every key.

    Raises :class:`D2ConversionError` for an unmappable variant or any unknown key."""
    keys = list(state_dict)
    for pattern, reason in _UNMAPPABLE:
        offending = [k for k in keys if pattern.fullmatch(k)]
        if offending:
            raise D2ConversionError(f"cannot convert to Detectron2: {reason} (keys {_describe(offending)})")
    result = D2Conversion(model={})
    unknown = []
    for key in keys:
        if key in CLASSIFIER_KEYS:
            result.dropped.append(key)
            continue
        name = _d2_name(key)
        if name is None:
            unknown.append(key)
            continue
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            raise D2ConversionError(f"value of '{key}' is a {type(value).__name__}, expected a tensor")
        result.renamed[key] = name
        result.model[name] = _to_numpy(value)
    if unknown:
        raise D2ConversionError(
            f"unknown keys for a timm ResNet -> Detectron2 conversion: {_describe(unknown)}")
    if "stem.conv1.weight" not in result.model:
        raise D2ConversionError("no ResNet stem ('conv1.weight') found: is this a timm ResNet state dict?")
    return result


def extract_timm_resnet(obj: Any) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Timm-named encoder weights from any loaded checkpoint object (our full or encoder-only
    checkpoints, the reference release files, wrapped or not), plus the keys dropped on the way
    (pre-training decoder, classifier)."""
    state_dict, report = load_encoder_state_dict(obj)
    return dict(state_dict), list(report.dropped)


def _check_target(path: Path) -> None:
    if Path(path).suffix != ".pkl":  # Detectron2 picks its loader by the file extension
        raise ValueError(f"Detectron2 reads converted weights from a '.pkl' file, got '{path}'")


def write_pkl(conversion: D2Conversion, path: Path) -> Path:
    """Write the ``.pkl`` atomically (a crash never leaves a truncated file behind)."""
    _check_target(path)
    return save_atomic(conversion.checkpoint(), path, dump=pickle.dump)


def convert_file(source: Path, target: Path, allow_unsafe: bool = False) -> D2Conversion:
    """Load ``source`` (any supported checkpoint layout), convert and write ``target``."""
    _check_target(target)
    state_dict, dropped_before = extract_timm_resnet(load_file(source, allow_unsafe=allow_unsafe))
    conversion = timm_resnet_to_d2(state_dict)
    conversion.dropped = dropped_before + conversion.dropped
    write_pkl(conversion, target)
    logger.info("wrote %s: %d tensors, dropped %d keys", target, len(conversion.model), len(conversion.dropped))
    return conversion


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-d2-convert",
        description="Convert timm-named ResNet weights (a sparkmim checkpoint or a reference "
                    "*_1kpretrained_timm_style.pth) into a Detectron2 .pkl for MODEL.WEIGHTS.")
    parser.add_argument("source", type=Path, help="checkpoint file (.pth)")
    parser.add_argument("target", type=Path, help="output file (.pkl)")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="load a file that needs full (code-executing) unpickling; only for trusted files")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        conversion = convert_file(args.source, args.target, allow_unsafe=args.allow_unsafe)
    except (KeyAccountingError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"spark-d2-convert: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.target}: {len(conversion.model)} Detectron2 tensors; dropped {len(conversion.dropped)} "
          f"keys{': ' + _describe(conversion.dropped, limit=8) if conversion.dropped else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
