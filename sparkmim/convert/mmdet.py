"""ConvNeXt weights in timm names -> the mmpretrain ``ConvNeXt`` backbone of MMDetection 3.x.

mmdet 3.x builds ConvNeXt detectors on ``mmpretrain.ConvNeXt`` and loads its weights with
``init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.')``: mmengine reads
``FILE['state_dict']``, keeps the keys starting with ``backbone.`` and strips that prefix. The file
written here has exactly that layout (``{'state_dict': {'backbone.<mmpretrain key>': tensor}, 'meta': ...}``).
Needs no mmdet: the names are a key table.

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
classifier (``head.fc``) is always dropped and reported."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch

from sparkmim.utils.checkpoint import save_atomic

from .encoder_weights import load_encoder_state_dict
from .key_rules import Drop, KeyTable, name_rule, to_vector

BACKBONE_PREFIX = "backbone."
FINAL_NORM_CHOICES = ("norm3", "drop")
# the norms mmpretrain adds after each output stage: never in a pre-trained classification encoder
OUTPUT_NORMS = tuple(f"norm{i}" for i in range(4))


def _flatten_pointwise(value: torch.Tensor) -> torch.Tensor:
    """timm's ``conv_mlp`` variant stores the MLP as 1x1 convs (C_out, C_in, 1, 1); mmpretrain's
    default ``linear_pw_conv=True`` uses ``nn.Linear`` (C_out, C_in)."""
    return value.flatten(1) if value.dim() == 4 else value


_BODY = (  # timm name -> mmpretrain name
    name_rule("stem.{i}.{p}", "downsample_layers.0.{i}.{p}"),
    name_rule("stages.{s}.downsample.{i}.{p}", "downsample_layers.{s}.{i}.{p}"),
    name_rule("stages.{s}.blocks.{b}.conv_dw.{p}", "stages.{s}.{b}.depthwise_conv.{p}"),
    name_rule("stages.{s}.blocks.{b}.norm.{p}", "stages.{s}.{b}.norm.{p}"),
    name_rule("stages.{s}.blocks.{b}.mlp.fc{n}.{p}", "stages.{s}.{b}.pointwise_conv{n}.{p}", _flatten_pointwise),
    name_rule("stages.{s}.blocks.{b}.gamma", "stages.{s}.{b}.gamma"),
    name_rule("stages.{s}.blocks.{b}.mlp.grn.weight", "stages.{s}.{b}.grn.gamma", to_vector),  # mmpretrain's GRN: (C,)
    name_rule("stages.{s}.blocks.{b}.mlp.grn.bias", "stages.{s}.{b}.grn.beta", to_vector),
)
_CLASSIFIER = Drop(r"head\.fc\.(weight|bias)", "ImageNet classifier")
_STEM_REQUIRED = (("downsample_layers.0.0.weight", "no ConvNeXt stem ('stem.0.weight') found: is this a ConvNeXt state dict?"),)
NAME = "timm ConvNeXt -> mmpretrain ConvNeXt"
TABLES = {
    "norm3": KeyTable(NAME, renames=_BODY + (name_rule("head.norm.{p}", "norm3.{p}"),),
                      drops=(_CLASSIFIER,), required=_STEM_REQUIRED),
    "drop": KeyTable(NAME, renames=_BODY, required=_STEM_REQUIRED,
                     drops=(_CLASSIFIER, Drop(r"head\.norm\.(weight|bias)", "classifier-side norm (--final-norm drop)"))),
}


@dataclass
class MMDetConversion:
    """Result of a conversion: the mmpretrain-named backbone tensors (without the ``backbone.``
    prefix) and the key accounting."""

    backbone: Dict[str, torch.Tensor]
    renamed: Dict[str, str] = field(default_factory=dict)  # timm key -> mmpretrain key
    dropped: List[str] = field(default_factory=list)  # source keys left out on purpose
    notes: List[str] = field(default_factory=list)

    def checkpoint(self) -> Dict[str, Any]:
        """The object mmengine's ``Pretrained`` initialiser reads with ``prefix='backbone.'``."""
        return {"state_dict": {BACKBONE_PREFIX + k: v for k, v in self.backbone.items()},
                "meta": {"converted_by": "sparkmim", "notes": list(self.notes), "dropped": list(self.dropped)}}


def timm_convnext_to_mmpretrain(state_dict: Mapping[str, torch.Tensor], final_norm: str = "norm3") -> MMDetConversion:
    """Rename a timm ConvNeXt(-V2) state dict to mmpretrain ``ConvNeXt`` backbone names.

    ``final_norm``: where the classifier-side norm (``head.norm``) goes: ``'norm3'`` (the last
    per-stage output norm, as in mmpretrain's checkpoints) or ``'drop'``. Raises
    :class:`~sparkmim.convert.KeyAccountingError` naming any key that is not a ConvNeXt key, and
    when the state dict has no ConvNeXt stem."""
    if final_norm not in TABLES:
        raise ValueError(f"final_norm must be one of {FINAL_NORM_CHOICES}, got '{final_norm}'")
    backbone, report = TABLES[final_norm].convert(state_dict)
    fresh = [n for n in OUTPUT_NORMS if f"{n}.weight" not in backbone]
    return MMDetConversion(backbone=backbone, renamed=report.renamed, dropped=report.dropped,
                           notes=[f"per-stage output norms left to their fresh initialisation: {', '.join(fresh)}"])


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
