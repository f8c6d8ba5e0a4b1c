"""ConvNeXt weights (timm or facebookresearch names) -> the mmpretrain ``ConvNeXt`` backbone of mmdet 3.x.

mmdet 3.x builds ConvNeXt detectors on ``mmpretrain.ConvNeXt`` and loads its weights with
``init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.')``: mmengine reads
``FILE['state_dict']``, keeps the keys starting with ``backbone.`` and strips that prefix. The file
written here has exactly that layout (``{'state_dict': {'backbone.<mmpretrain key>': tensor}, 'meta': ...}``).

Names: timm ``stem.{0,1}`` / ``stages.i.downsample.{0,1}`` become ``downsample_layers.i.{0,1}``,
``stages.i.blocks.j.{conv_dw, mlp.fc1, mlp.fc2}`` become ``stages.i.j.{depthwise_conv, pointwise_conv1,
pointwise_conv2}`` (``norm`` and ``gamma`` keep their names, ConvNeXt-V2 ``mlp.grn.{weight,bias}`` become
``grn.{gamma,beta}``). facebookresearch-named files (the reference release's
``*_1kpretrained_official_style.pth``) are first read into timm names by the core loader.

Per-stage output norms: with ``out_indices=[0, 1, 2, 3]`` mmpretrain's ConvNeXt has one LayerNorm per
output (``norm0`` .. ``norm3``) that a classification network lacks. ``norm0``-``norm2`` exist in no
pre-trained file, so they start from their fresh initialisation (weight 1, bias 0). ``norm3`` takes
the classifier-side final norm (timm ``head.norm``, facebookresearch ``norm``), as mmpretrain's own
ImageNet checkpoints do; SparK pre-training never runs that norm, so in a SparK file it still holds its
initial values and the result equals a fresh ``norm3``. ``final_norm='drop'`` drops it instead. The
classifier (``head.fc``) is always dropped and reported.

Every source key is converted or dropped on purpose; an unknown key is a :class:`KeyAccountingError`.

Usage as a command: ``spark-mmdet-convert SRC.pth DST.pth`` (also
``python -m sparkmim.downstream_mmdet.convert``).
"""
import argparse
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from sparkmim.convert import ConversionReport, KeyAccountingError, load_encoder_state_dict
from sparkmim.utils.checkpoint import load_file, save_atomic

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
FINAL_NORM_CHOICES = ("norm3", "drop")
# the norms mmpretrain adds after each output stage: never in a pre-trained classification encoder
OUTPUT_NORMS = tuple(f"norm{i}" for i in range(4))


def _flatten_pointwise(value: torch.Tensor) -> torch.Tensor:
    """timm's ``conv_mlp`` variant stores the MLP as 1x1 convs (C_out, C_in, 1, 1); mmpretrain's
    default ``linear_pw_conv=True`` uses ``nn.Linear`` (C_out, C_in)."""
    return value.flatten(1) if value.dim() == 4 else value


def _flatten_grn(value: torch.Tensor) -> torch.Tensor:
    return value.reshape(-1)  # mmpretrain's GRN keeps gamma/beta as (C,)


def _keep(value: torch.Tensor) -> torch.Tensor:
    return value


# (timm pattern, mmpretrain replacement, value transform); the first full match wins
_RULES: Tuple[Tuple["re.Pattern[str]", str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    (re.compile(r"stem\.([01])\.(weight|bias)"), r"downsample_layers.0.\1.\2", _keep),
    (re.compile(r"stages\.([1-9]\d*)\.downsample\.([01])\.(weight|bias)"), r"downsample_layers.\1.\2.\3", _keep),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(weight|bias)"), r"stages.\1.\2.depthwise_conv.\3", _keep),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.norm\.(weight|bias)"), r"stages.\1.\2.norm.\3", _keep),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)"),
     r"stages.\1.\2.pointwise_conv\3.\4", _flatten_pointwise),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.gamma"), r"stages.\1.\2.gamma", _keep),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight"), r"stages.\1.\2.grn.gamma", _flatten_grn),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias"), r"stages.\1.\2.grn.beta", _flatten_grn),
)
_FINAL_NORM = re.compile(r"head\.norm\.(weight|bias)")


@dataclass
class MMDetConversion:
    """Result of a conversion: the mmpretrain-named backbone tensors (without the ``backbone.``
    prefix) and the key accounting."""

    backbone: Dict[str, torch.Tensor]
    renamed: Dict[str, str] = field(default_factory=dict)  # timm key -> mmpretrain key
    dropped: List[str] = field(default_factory=list)  # source keys left out on purpose
    notes: List[str] = field(default_factory=list)

    def report(self) -> ConversionReport:
        """The key accounting in the form every sparkmim converter reports it."""
        return ConversionReport(converted=list(self.renamed), dropped=list(self.dropped), notes=list(self.notes))

    def checkpoint(self) -> Dict[str, Any]:
        """The object mmengine's ``Pretrained`` initialiser reads with ``prefix='backbone.'``."""
        return {"state_dict": {BACKBONE_PREFIX + k: v for k, v in self.backbone.items()},
                "meta": {"converted_by": "sparkmim.downstream_mmdet.convert", "notes": list(self.notes),
                         "dropped": list(self.dropped)}}


def _describe(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")


def _mmpretrain_name(key: str) -> Optional[Tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    for pattern, replacement, transform in _RULES:
        match = pattern.fullmatch(key)
        if match:
            return match.expand(replacement), transform
    return None


def timm_convnext_to_mmpretrain(state_dict: Mapping[str, torch.Tensor],
                                final_norm: str = "norm3") -> MMDetConversion:
    """Rename a timm ConvNeXt(-V2) state dict to mmpretrain ``ConvNeXt`` backbone names.

    ``final_norm``: where the classifier-side norm (``head.norm``) goes: ``'norm3'`` (the last
    per-stage output norm, as in mmpretrain's checkpoints) or ``'drop'``. The classifier
    (``head.fc``) is dropped. Raises :class:`KeyAccountingError` naming any key that is not a
    ConvNeXt key, and when the state dict has no ConvNeXt stem."""
    if final_norm not in FINAL_NORM_CHOICES:
        raise ValueError(f"final_norm must be one of {FINAL_NORM_CHOICES}, got '{final_norm}'")
    result = MMDetConversion(backbone={})
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("head.fc."):
            result.dropped.append(key)
            continue
        norm = _FINAL_NORM.fullmatch(key)
        if norm:
            if final_norm == "drop":
                result.dropped.append(key)
                continue
            name, transform = f"norm3.{norm[1]}", _keep
        else:
            found = _mmpretrain_name(key)
            if found is None:
                unknown.append(key)
                continue
            name, transform = found
        if not isinstance(value, torch.Tensor):
            raise KeyAccountingError(f"value of '{key}' is a {type(value).__name__}, expected a tensor")
        result.renamed[key] = name
        result.backbone[name] = transform(value)
    if unknown:
        raise KeyAccountingError(
            f"unknown keys for a timm ConvNeXt -> mmpretrain ConvNeXt conversion: {_describe(sorted(unknown))}")
    if "downsample_layers.0.0.weight" not in result.backbone:
        raise KeyAccountingError("no ConvNeXt stem ('stem.0.weight') found: is this a ConvNeXt state dict?")
    fresh = [n for n in OUTPUT_NORMS if f"{n}.weight" not in result.backbone]
    result.notes.append(f"per-stage output norms left to their fresh initialisation: {', '.join(fresh)}")
    return result


def convert_object(obj: Any, final_norm: str = "norm3") -> MMDetConversion:
    """Convert any loaded checkpoint object (our full or encoder-only checkpoint, the reference
    ``*_official_style.pth`` / spark-style files, wrapped or not) to mmpretrain names."""
    state_dict, loaded = load_encoder_state_dict(obj)
    conversion = timm_convnext_to_mmpretrain(state_dict, final_norm=final_norm)
    conversion.dropped = list(loaded.dropped) + conversion.dropped
    conversion.notes = list(loaded.notes) + conversion.notes
    return conversion


def is_converted(obj: Any) -> bool:
    """True for a file this module wrote (or any mmengine checkpoint with ``backbone.`` keys)."""
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return isinstance(state, Mapping) and any(str(k).startswith(BACKBONE_PREFIX) for k in state)


def write_checkpoint(conversion: MMDetConversion, path: Path) -> Path:
    """Write the converted file atomically (a crash never leaves a truncated file behind)."""
    return save_atomic(conversion.checkpoint(), path)


def convert_file(source: Path, target: Path, final_norm: str = "norm3", allow_unsafe: bool = False) -> MMDetConversion:
    """Load ``source`` (any supported checkpoint layout), convert and write ``target``."""
    if Path(source).resolve() == Path(target).resolve():
        raise ValueError(f"refusing to overwrite the source checkpoint {source}; choose another target")
    conversion = convert_object(load_file(source, allow_unsafe=allow_unsafe), final_norm=final_norm)
    write_checkpoint(conversion, target)
    logger.info("wrote %s: %d backbone tensors, dropped %d keys", target, len(conversion.backbone),
                len(conversion.dropped))
    return conversion


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spark-mmdet-convert",
        description="Convert ConvNeXt weights (a sparkmim checkpoint, timm names, or the reference "
                    "*_1kpretrained_official_style.pth) into an mmpretrain ConvNeXt backbone file for "
                    "MMDetection 3.x (init_cfg=dict(type='Pretrained', checkpoint=DST, prefix='backbone.')).")
    parser.add_argument("source", type=Path, help="checkpoint file (.pth)")
    parser.add_argument("target", type=Path, help="output file (.pth)")
    parser.add_argument("--final-norm", choices=FINAL_NORM_CHOICES, default="norm3",
                        help="where the classifier-side final norm goes (default: norm3, the last output norm)")
    parser.add_argument("--allow-unsafe", action="store_true",
                        help="load a file that needs full (code-executing) unpickling; only for trusted files")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        conversion = convert_file(args.source, args.target, final_norm=args.final_norm,
                                  allow_unsafe=args.allow_unsafe)
    except (KeyAccountingError, FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"spark-mmdet-convert: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.target}: {len(conversion.backbone)} mmpretrain ConvNeXt tensors; dropped "
          f"{len(conversion.dropped)} keys{': ' + _describe(conversion.dropped, limit=8) if conversion.dropped else ''}")
    for note in conversion.notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
