"""Load pre-trained encoder weights into a timm classifier, accounting for every key.

The source file may be any format the core converter knows (our encoder-only or full pre-training
checkpoint, the reference release files); after conversion to timm names, the only keys the
classifier may lack are its own classifier's and the classifier-side norm of a ConvNeXt head (the
reference's encoders do not have it; it then starts from its initialisation). Anything else missing,
any key left over and any shape mismatch is an error that names the keys: a silently half-loaded
backbone would fine-tune "successfully" and just report a worse accuracy.
"""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch
from torch import nn

from sparkmim.convert.encoder_weights import CLASSIFIER_SIDE_NORM_PREFIXES
from sparkmim.convert.loading import KeyCheck, check_keys, shapes_of, shown
from sparkmim.utils.checkpoint import NoStateDictError, load_file
from sparkmim.utils.errors import UserError

logger = logging.getLogger(__name__)


class WeightLoadingError(UserError, RuntimeError):
    """The pre-trained weights do not match the model (keys listed in the message)."""


@dataclass
class LoadReport:
    loaded: int
    classifier_missing: List[str] = field(default_factory=list)
    counter_buffers_missing: List[str] = field(default_factory=list)
    dropped_by_converter: List[str] = field(default_factory=list)


def classifier_prefixes(model: nn.Module) -> Tuple[str, ...]:
    """Parameter-name prefixes of the model's classifier, from timm's pretrained_cfg
    ('fc' for ResNet, 'head.fc' for ConvNeXt)."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    if not classifier:
        raise WeightLoadingError(f"{type(model).__name__} does not name its classifier in pretrained_cfg; give "
                                 "the class pretrained_cfg = {'classifier': '<attribute name>'} (docs/custom_cnn.md)")
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return tuple(f"{name}." for name in names)


def load_into_classifier(model: nn.Module, encoder_state: Dict[str, torch.Tensor]) -> LoadReport:
    """Copy timm-named encoder weights into ``model``; only its classifier (and a classifier-side norm
    after global pooling, which pre-training never trains) may stay unloaded.

    BatchNorm ``num_batches_tracked`` counters may also be absent (some releases strip them; they
    only matter for BatchNorm without momentum)."""
    prefixes = classifier_prefixes(model)
    source = {k: v for k, v in encoder_state.items() if not k.startswith(prefixes)}
    dropped_classifier = sorted(set(encoder_state) - set(source))
    if dropped_classifier:
        logger.info("not loading the source classifier (%s): the new task trains its own",
                    shown(dropped_classifier, 20))
    trained_by_task = prefixes + CLASSIFIER_SIDE_NORM_PREFIXES
    check = check_keys(shapes_of(model.state_dict()), shapes_of(source),
                       may_be_missing=lambda key: key.startswith(trained_by_task) or key.endswith("num_batches_tracked"))
    if check.problems(limit=1):
        raise WeightLoadingError(_mismatch_message(model, encoder_state, check))
    classifier_missing = [k for k in check.allowed_missing if k.startswith(trained_by_task)]
    counters = [k for k in check.allowed_missing if k not in classifier_missing]
    model.load_state_dict(source, strict=False)
    return LoadReport(loaded=len(source), classifier_missing=classifier_missing, counter_buffers_missing=counters)


def _mismatch_message(model: nn.Module, encoder_state: Dict[str, torch.Tensor], check: KeyCheck) -> str:
    """Weights of another architecture than --model fail on nearly every key, and two lists of 20 key names
    do not say what to give instead; their layout (block counts, widths) often does."""
    from sparkmim.convert.formats import guess_model

    built = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
    pretrained = guess_model(encoder_state)
    if pretrained and pretrained != built:
        return (f"the pre-trained weights are a timm '{pretrained}' encoder (by their blocks and widths), the model "
                f"is '{built}': give --model {pretrained} ({'; '.join(check.problems(limit=3))})")
    return (f"the pre-trained weights do not fit {built}: " + "; ".join(check.problems(limit=20))
            + " (is --model the architecture that was pre-trained?)")


def check_stem_channels(model: nn.Module, encoder_state: Dict[str, torch.Tensor], path: Union[str, Path]) -> None:
    """Weights pre-trained on another channel count than the model's (an encoder file copied without its run's
    config.yaml, or a wrong --in-chans) would otherwise fail as a list of mis-shaped keys; say what to give."""
    from sparkmim.convert.formats import stem_in_chans

    pretrained, built = stem_in_chans(encoder_state), stem_in_chans(model.state_dict())
    if pretrained is not None and built is not None and pretrained != built:
        raise WeightLoadingError(f"{path} was pre-trained on {pretrained} input channel(s), the model takes {built} "
                                 f"(--in-chans {built}); give --in-chans {pretrained} with the data's --mean/--std "
                                 "or --norm-stats auto")


def load_pretrained(model: nn.Module, path: Union[str, Path], allow_unsafe: bool = False) -> LoadReport:
    """Read ``path`` (safe unpickling), convert it with the core converter and load it."""
    from sparkmim.convert import KeyAccountingError, load_encoder_state_dict

    obj = load_file(path, allow_unsafe=allow_unsafe)
    try:
        encoder_state, conversion = load_encoder_state_dict(obj)
    except (KeyAccountingError, NoStateDictError) as error:
        raise WeightLoadingError(f"{path}: {error}") from error
    check_stem_channels(model, encoder_state, path)
    report = load_into_classifier(model, encoder_state)
    report.dropped_by_converter = sorted(getattr(conversion, "dropped", []) or [])
    left = shown(report.classifier_missing, 20)
    # nothing left over: a linear probe's backbone (its head is outside the module given here, and trains)
    logger.info("loaded %d tensors from %s; %s%s", report.loaded, path,
                f"classifier left to train: {left}" if left else "every tensor of the backbone",
                f"; dropped by the converter: {len(report.dropped_by_converter)} keys "
                f"({shown(report.dropped_by_converter, 5)})" if report.dropped_by_converter else "")
    return report
