"""A submanifold-sparse encoder made from any timm CNN that exposes ``feature_info``.

Channels and strides come from timm's ``feature_info`` and features from
``forward_intermediates(..., intermediates_only=True)``, so no per-family forward code is needed.
The timm model is converted in place (see :mod:`sparkmim.sparse.rules`) and keeps its parameter
names: ``encoder.model.state_dict()`` is a plain timm state dict.
"""
import difflib
import importlib
import logging
from typing import Any, Callable, Dict, List, Optional, Set, Union

import torch
import torch.nn as nn

from sparkmim.utils.errors import UserError

from .context import MaskContext
from .probe import verify_sparse_encoder
from .rules import sparsify_

logger = logging.getLogger(__name__)

NUM_LEVELS = 4


class EncoderSpecError(UserError, ValueError):
    """The model cannot serve as a SparK encoder (no feature_info, wrong strides, unknown name...)."""


def is_factory_path(name: str) -> bool:
    """``package.module:factory`` names a custom CNN's constructor rather than a timm model."""
    return ":" in name


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The callable named by ``package.module:factory``; a one-line error naming what is missing."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise EncoderSpecError(f"cannot import '{module_name}' for the model '{path}' ({error}); give "
                               "'package.module:factory' of an importable module or a timm model name") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise EncoderSpecError(f"'{module_name}' has no callable '{attribute}' (model '{path}')")
    return factory


def check_model_name(name: str) -> None:
    """A timm model name, or an importable ``package.module:factory``; the error for an unknown name
    lists the closest timm names. Every command asks this before building anything."""
    import timm

    if is_factory_path(name):
        import_factory(name)
        return
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise EncoderSpecError(f"unknown timm model '{name}'{hint}")


def create_timm_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Create a timm model (or a custom CNN by ``package.module:factory``, called with timm's keyword
    arguments) without classifier and pooling, ready to be made sparse."""
    import timm

    if is_factory_path(name):  # import_factory raises the same errors check_model_name would
        return import_factory(name)(**{"num_classes": 0, "global_pool": "", **kwargs})
    check_model_name(name)
    options = dict(pretrained=False, num_classes=0, global_pool="")
    options.update(kwargs)
    return timm.create_model(name, **options)


def _feature_dicts(model: nn.Module) -> List[Dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if info is None:
        raise EncoderSpecError(
            f"{type(model).__name__} has no timm feature_info; SparK needs the channels and strides of its "
            f"feature maps (any timm CNN with feature_info and forward_intermediates works)")
    return info.get_dicts() if hasattr(info, "get_dicts") else [dict(d) for d in info]


def total_stride(model: Union[str, nn.Module], model_kwargs: Optional[Dict[str, Any]] = None) -> int:
    """The encoder's total stride (the side of a SparK mask patch), from its ``feature_info``; a model given
    by name is built on the meta device (no memory, no initialisation), so callers can check an input
    size before building anything."""
    if isinstance(model, str):
        try:
            with torch.device("meta"):
                model = create_timm_encoder(model, **(model_kwargs or {}))
        except (NotImplementedError, RuntimeError):  # a constructor that reads tensor values: build it for real
            model = create_timm_encoder(model, **(model_kwargs or {}))
    return int(_feature_dicts(model)[-1]["reduction"])


def _input_channels(model: nn.Module) -> int:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else 3


def _modules_called(model: nn.Module, in_chans: int, size: int) -> Set[int]:
    """Ids of the modules that run when computing the features (a dry run on a zero image), and of
    their ancestors (a container may be sliced or indexed rather than called, as timm does with stages)."""
    called: Set[int] = set()
    handles = [m.register_forward_hook(lambda mod, _i, _o: called.add(id(mod))) for m in model.modules()]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model.forward_intermediates(torch.zeros(1, in_chans, size, size, device=device),
                                        indices=NUM_LEVELS, intermediates_only=True)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name, module in model.named_modules():
        if id(module) in called and name:
            parts = name.split(".")
            for depth in range(len(parts)):
                called.add(id(model.get_submodule(".".join(parts[:depth]))))
    return called


class SparseEncoder(nn.Module):
    """Wraps a timm CNN; ``forward(images, active)`` returns its 4 sparse feature maps, finest first.

    ``active``: bool (B, 1, H/r, W/r), True = visible, r = ``downsample_ratio``. Masked positions of
    every feature map (and of every layer output inside) are exactly zero."""

    def __init__(self, model: nn.Module, sync_bn: bool = False, verify: bool = True) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates"):
            raise EncoderSpecError(f"{type(model).__name__} has no forward_intermediates(); use a timm >= 1.0.3 CNN")
        levels = _feature_dicts(model)[-NUM_LEVELS:]
        reductions = [int(level["reduction"]) for level in levels]
        if len(levels) < NUM_LEVELS or any(b != 2 * a for a, b in zip(reductions, reductions[1:])):
            raise EncoderSpecError(
                f"SparK needs {NUM_LEVELS} feature maps whose strides double (e.g. 4, 8, 16, 32); "
                f"{type(model).__name__} has strides {reductions}")
        self.downsample_ratio: int = reductions[-1]
        self.feature_strides: List[int] = reductions
        self.feature_channels: List[int] = [int(level["num_chs"]) for level in levels]
        self.in_chans = _input_channels(model)
        self.context = MaskContext()
        called = _modules_called(model, self.in_chans, 2 * self.downsample_ratio)
        # parameters of modules the feature forward never runs (e.g. a classifier head's norm): a
        # checkpoint may lack them without consequence
        self.unused_state_keys: List[str] = [
            f"{module_name}.{key}" if module_name else key
            for module_name, module in model.named_modules() if id(module) not in called
            for key, _ in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))]
        sparsify_(model, self.context, sync_bn=sync_bn, called=called)
        if verify:
            verify_sparse_encoder(model, self.context, self.in_chans, self.downsample_ratio)
        self.model = model

    def forward(self, images: torch.Tensor, active: torch.Tensor) -> List[torch.Tensor]:
        with self.context.use(active):
            masked = images * self.context.mask_like(images)
            features = self.model.forward_intermediates(masked, indices=NUM_LEVELS, intermediates_only=True)
        return list(features)


def make_sparse_encoder(model: Union[str, nn.Module], sync_bn: bool = False,
                        model_kwargs: Optional[Dict[str, Any]] = None, verify: bool = True) -> SparseEncoder:
    """Turn a timm model (a registered name with kwargs, or a module) into a :class:`SparseEncoder`.

    A module is converted in place: afterwards it only runs under a visible mask. ``verify`` runs the
    build-time probe of :mod:`sparkmim.sparse.probe` (two tiny eval-mode forwards)."""
    if isinstance(model, str):
        model = create_timm_encoder(model, **(model_kwargs or {}))
    elif model_kwargs:
        raise ValueError("model_kwargs only apply when the encoder is given by name")
    return SparseEncoder(model, sync_bn=sync_bn, verify=verify)
