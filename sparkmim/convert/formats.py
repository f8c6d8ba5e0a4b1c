"""Recognise what a loaded checkpoint object is, and bring its encoder weights to timm names.

The core's :func:`sparkmim.convert.load_encoder_state_dict` does the conversions it knows (our
checkpoints, the reference releases); this module adds the recognition step the converter CLI needs
(which layout, which timm model, is there a decoder) and the one layout the core does not read:
torchvision's ConvNeXt (torchvision's ResNet already uses timm's names)."""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .convnext_keys import is_fb_convnext, is_torchvision_convnext
from .encoder_weights import CLASSIFIER_PREFIXES, CLASSIFIER_SIDE_NORM_PREFIXES, load_encoder_state_dict
from .loading import check_keys, shapes_of
from .reference import spark_state_from_reference
from .report import ConversionReport
from sparkmim.utils.checkpoint import strip_prefix, unwrap_state_dict

# format names (stable strings, shown to users and used by tests)
SPARKMIM_FULL = "sparkmim-pretrain"        # our resumable pre-training checkpoint
SPARKMIM_WEIGHTS = "sparkmim-weights"      # our whole-model weights file (spark-convert --to sparkmim)
SPARKMIM_FINETUNED = "sparkmim-finetune"   # a spark-finetune checkpoint (classifier trained)
REFERENCE_WITH_DECODER = "reference-withdecoder-spark-style"
FB_CONVNEXT = "facebookresearch-convnext"  # the reference's *_official_style.pth
TORCHVISION_CONVNEXT = "torchvision-convnext"
TIMM = "timm"                              # timm names: our encoder-only file, *_timm_style.pth, torchvision ResNet

DESCRIPTIONS = {
    SPARKMIM_FULL: "sparkmim full pre-training checkpoint (SparK model with decoder, optimizer, config)",
    SPARKMIM_WEIGHTS: "sparkmim SparK model weights (encoder, densify layers and decoder, with config)",
    SPARKMIM_FINETUNED: "spark-finetune checkpoint (fine-tuned classifier network)",
    REFERENCE_WITH_DECODER: "SparK reference release *_withdecoder_1kpretrained_spark_style.pth (whole model)",
    FB_CONVNEXT: "ConvNeXt in facebookresearch names (the reference release *_1kpretrained_official_style.pth)",
    TORCHVISION_CONVNEXT: "torchvision ConvNeXt state dict",
    TIMM: "timm-named state dict (our encoder-only checkpoint, the reference *_1kpretrained_timm_style.pth, "
          "a timm model, or a torchvision ResNet, whose names equal timm's)",
}

WEIGHTS_FORMAT = SPARKMIM_WEIGHTS

# keys a pre-trained encoder file may lack: the classifier and a classifier-side norm
OPTIONAL_PREFIXES = tuple(CLASSIFIER_PREFIXES) + CLASSIFIER_SIDE_NORM_PREFIXES

# the layouts of the common ResNets ((blocks per stage), bottleneck) and ConvNeXts ((blocks), stem width)
RESNET_BLOCKS = {
    ((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((2, 2, 2, 2), True): "resnet26",
    ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152",
    ((3, 24, 36, 3), True): "resnet200",
}
CONVNEXT_LAYOUT = {
    ((2, 2, 6, 2), 40): "convnext_atto", ((2, 2, 6, 2), 48): "convnext_femto", ((2, 2, 6, 2), 64): "convnext_pico",
    ((2, 2, 8, 2), 80): "convnext_nano", ((3, 3, 9, 3), 96): "convnext_tiny", ((3, 3, 27, 3), 96): "convnext_small",
    ((3, 3, 27, 3), 128): "convnext_base", ((3, 3, 27, 3), 192): "convnext_large",
    ((3, 3, 27, 3), 256): "convnext_xlarge",
}
# tried in turn when the layout suggests nothing (or the suggestion does not fit): timm's tiny test models
CANDIDATE_MODELS = ("test_resnet", "test_convnext", "test_convnext2", "test_convnext3")


@dataclass
class SourceInfo:
    """What a checkpoint is: its layout, the timm model (when known) and what it carries."""

    format: str
    encoder: Dict[str, torch.Tensor]
    report: ConversionReport
    model: Optional[str] = None
    model_from: str = ""                     # where the model name came from (config, matching, --model)
    spark_state: Optional[Dict[str, torch.Tensor]] = None   # whole SparK model in sparkmim names, if any
    spark_config: Dict[str, Any] = field(default_factory=dict)
    classifier: List[str] = field(default_factory=list)     # classifier keys found (dropped)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    spark_dropped: List[str] = field(default_factory=list)   # keys left out of spark_state (unused buffers)
    recorded_model: Optional[str] = None     # the name the file itself gives, when --model replaced it
    recorded_from: str = ""

    @property
    def override_note(self) -> str:
        """Why weights may not fit a ``--model`` that replaced another name the file records ("" otherwise):
        the likeliest culprit, which a list of unmatched keys does not name."""
        if self.model_from != "--model" or not self.recorded_model or self.recorded_model == self.model:
            return ""
        return f"the file itself records '{self.recorded_model}' in {self.recorded_from}; leave --model out"

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.format]

    @property
    def has_decoder(self) -> bool:
        return self.spark_state is not None

    @property
    def in_chans(self) -> int:
        """The encoder's input channels (3 unless it was pre-trained on other data)."""
        return int(self.model_kwargs.get("in_chans", 3))


# --- model identification -------------------------------------------------------------------------

def _model_shapes(name: str, model_kwargs: Optional[Mapping[str, Any]] = None) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of a timm model, built on the meta device (no memory, no init cost). An unknown name or
    keyword argument is an :class:`~sparkmim.sparse.encoder.EncoderSpecError` (a user error naming it)."""
    from sparkmim.sparse.encoder import create_model

    with torch.device("meta"):
        model = create_model(name, **dict(model_kwargs or {}))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_against_model(encoder: Mapping[str, torch.Tensor], model: str,
                        model_kwargs: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Problems (missing / unexpected / wrong shape) of timm-named encoder weights for ``model``;
    the classifier may be absent, BatchNorm batch counters too."""
    check = check_keys(_model_shapes(model, model_kwargs), shapes_of(encoder),
                       may_be_missing=lambda key: key.startswith(OPTIONAL_PREFIXES) or key.endswith("num_batches_tracked"))
    return check.problems(model_name=model, limit=8)


def _blocks_per_stage(keys, pattern: str) -> Tuple[int, ...]:
    counts: Dict[int, set] = {}
    for key in keys:
        match = re.match(pattern, key)
        if match:
            counts.setdefault(int(match[1]), set()).add(int(match[2]))
    return tuple(len(counts[i]) for i in sorted(counts))


def guess_model(encoder: Mapping[str, torch.Tensor]) -> Optional[str]:
    """A timm name from the layout alone (block counts, widths), without building models."""
    keys = list(encoder)
    if "conv1.weight" in encoder or "conv1.0.weight" in encoder:
        blocks = _blocks_per_stage(keys, r"layer(\d)\.(\d+)\.")
        bottleneck = any(k.endswith(".conv3.weight") for k in keys)
        name = RESNET_BLOCKS.get((blocks, bottleneck))
        return f"{name}d" if name and "conv1.0.weight" in encoder else name
    if "stem.0.weight" in encoder and any(k.startswith("stages.0.blocks.") for k in keys):
        blocks = _blocks_per_stage(keys, r"stages\.(\d)\.blocks\.(\d+)\.")
        width = int(encoder["stem.0.weight"].shape[0])
        name = CONVNEXT_LAYOUT.get((blocks, width))
        if name and any(".grn." in k for k in keys):
            name = name.replace("convnext_", "convnextv2_")
        return name
    return None


def identify_model(encoder: Mapping[str, torch.Tensor], candidates: Sequence[str] = CANDIDATE_MODELS,
                   model_kwargs: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """The timm model (built with ``model_kwargs``) whose keys and shapes the weights fill exactly: first the
    name the layout suggests, then each candidate in turn (models are built on the meta device, no memory used)."""
    from sparkmim.sparse.encoder import EncoderSpecError

    guess = guess_model(encoder)
    ordered = ([guess] if guess else []) + [c for c in candidates if c != guess]
    keys = set(encoder)
    for name in ordered:
        try:
            shapes = _model_shapes(name, model_kwargs)
        except (EncoderSpecError, RuntimeError):  # a name this timm version does not know
            continue
        wanted = {k for k in shapes if not k.startswith(OPTIONAL_PREFIXES) and not k.endswith("num_batches_tracked")}
        if not wanted <= keys or not keys <= set(shapes):
            continue
        if all(tuple(encoder[k].shape) == shapes[k] for k in keys):
            return name
    return None


# --- recognition ----------------------------------------------------------------------------------

def stem_in_chans(encoder: Mapping[str, torch.Tensor]) -> Optional[int]:
    """Input channels of timm-named encoder weights: the second dimension of the first 4-D weight (the stem
    convolution comes first in every timm CNN's state dict); None when there is none."""
    for key, tensor in encoder.items():
        if key.endswith("weight") and tensor.dim() == 4:
            return int(tensor.shape[1])
    return None


def configured_in_chans(config: Mapping[str, Any]) -> Optional[int]:
    """The input channels a sparkmim config records: spark-pretrain's ``in_chans``, or the ``encoder_kwargs``
    of a whole-model file (spark-convert --to sparkmim); None when it records none (an RGB run from before
    the option, or another project's file). One reading for spark-convert, spark-viz and spark-finetune."""
    configured = config.get("in_chans", (config.get("encoder_kwargs") or {}).get("in_chans"))
    return None if configured is None else int(configured)


def _fill_in_chans(info: "SourceInfo") -> None:
    """Encoders pre-trained on other channel counts (grayscale, multispectral) are built with timm's
    ``in_chans``, which sparkmim's checkpoints record in their config (for files without a config, see
    :func:`check_against_model_any_channels`)."""
    configured = configured_in_chans(info.spark_config)
    if "in_chans" not in info.model_kwargs and configured is not None and configured != 3:
        info.model_kwargs["in_chans"] = configured


def check_against_model_any_channels(info: "SourceInfo") -> List[str]:
    """:func:`check_against_model`; when the weights do not fit and their stem takes another number of
    channels than 3, the model with that ``in_chans`` is tried too and, if it fits, kept in ``info``."""
    problems = check_against_model(info.encoder, info.model, info.model_kwargs)
    channels = stem_in_chans(info.encoder)
    if problems and "in_chans" not in info.model_kwargs and channels not in (None, 3):
        kwargs = {**info.model_kwargs, "in_chans": channels}
        if not check_against_model(info.encoder, info.model, kwargs):
            info.model_kwargs = kwargs
            return []
    return problems


def _spark_model_name(config: Mapping[str, Any]) -> Optional[str]:
    name = config.get("model")
    return str(name) if isinstance(name, str) and name else None


def recognise(obj: Any, model: Optional[str] = None) -> SourceInfo:
    """Classify a loaded checkpoint object and extract timm-named encoder weights from it.

    ``model`` (a timm name) overrides what the file says; otherwise the name comes from the file's
    config or from matching the weights against :data:`CANDIDATE_MODELS`."""
    if isinstance(obj, Mapping) and obj.get("format") in (SPARKMIM_FULL, SPARKMIM_WEIGHTS):
        config = dict(obj.get("config") or {})
        encoder, report = load_encoder_state_dict({"model": obj["model"]})
        info = SourceInfo(obj["format"], encoder, report, spark_state=dict(obj["model"]), spark_config=config)
        info.model, info.model_from = _spark_model_name(config), "the checkpoint's config"
        info.model_kwargs = dict(config.get("encoder_kwargs") or {})  # spark-convert --to sparkmim's
    elif isinstance(obj, Mapping) and "arch" in obj and "classes" in obj and isinstance(obj.get("model"), Mapping):
        encoder, report = load_encoder_state_dict({"model": obj["model"]})
        info = SourceInfo(SPARKMIM_FINETUNED, encoder, report)
        info.model, info.model_from = str(obj["arch"]), "the checkpoint's record"
        info.model_kwargs = dict((obj.get("config") or {}).get("model_kwargs") or {})
    else:
        state = strip_prefix(unwrap_state_dict(obj), "module.")
        if any(k.startswith("sparse_encoder.sp_cnn.") for k in state):
            spark_state, ref_report, config = spark_state_from_reference(obj)
            encoder, report = load_encoder_state_dict(obj)
            info = SourceInfo(REFERENCE_WITH_DECODER, encoder, report, spark_state=spark_state,
                              spark_config={"reference": config}, spark_dropped=list(ref_report.dropped))
            if isinstance(obj, Mapping) and isinstance(obj.get("arch"), str):
                info.model, info.model_from = obj["arch"], "the release's 'arch' entry"
        elif is_fb_convnext(state):
            encoder, report = load_encoder_state_dict(obj)
            info = SourceInfo(FB_CONVNEXT, encoder, report)
        elif is_torchvision_convnext(state):
            encoder, report = load_encoder_state_dict(obj)
            info = SourceInfo(TORCHVISION_CONVNEXT, encoder, report)
        else:
            encoder, report = load_encoder_state_dict(obj)
            info = SourceInfo(TIMM, encoder, report)
    info.classifier = [k for k in info.report.dropped if k.startswith(CLASSIFIER_PREFIXES)]
    _fill_in_chans(info)
    if model:
        info.recorded_model, info.recorded_from = info.model, info.model_from
        info.model, info.model_from = model, "--model"
    elif info.model is None:
        # a file without a config may still come from another channel count: its stem tells (a grayscale or
        # multispectral encoder copied away from its run folder)
        channels = stem_in_chans(info.encoder)
        kwargs = dict(info.model_kwargs)
        if "in_chans" not in kwargs and channels not in (None, 3):
            kwargs["in_chans"] = channels
        info.model = identify_model(info.encoder, model_kwargs=kwargs)
        if info.model:
            info.model_kwargs, info.model_from = kwargs, "matching the weights against timm models"
    return info
