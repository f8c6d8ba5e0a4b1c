"""A submanifold-sparse encoder made from any timm CNN that exposes ``feature_info``.

Channels and strides come from timm's ``feature_info`` and features from
``forward_intermediates(..., intermediates_only=True)``, so no per-family forward code is needed.
The timm model is converted in place (see :mod:`sparkmim.sparse.rules`) and keeps its parameter
names: ``encoder.model.state_dict()`` is a plain timm state dict.
"""
import difflib
import importlib
import logging
import re
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn

from sparkmim.utils.errors import UserError, describe_error

from .context import MaskContext
from .probe import verify_sparse_encoder
from .rules import UnsupportedLayerError, add_visible_mean_hooks, sparsify_

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


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """A timm model by name (random weights), or a custom CNN by ``package.module:factory`` called with the
    same (timm) keyword arguments: the one place where both kinds of name are built."""
    import timm

    if is_factory_path(name):  # import_factory raises the same errors check_model_name would
        return import_factory(name)(**kwargs)
    check_model_name(name)
    try:
        return timm.create_model(name, **{"pretrained": False, **kwargs})
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        argument = unexpected.group(1) if unexpected else None
        # only arguments given here are the user's to fix; the head options are the caller's (create_timm_encoder
        # retries without them), and an argument timm adds itself is timm's matter
        if argument not in kwargs or argument in ("global_pool", "num_classes"):
            raise
        raise EncoderSpecError(f"{name} takes no argument '{argument}' ({error}); check the model's keyword "
                               "arguments (--model-kwargs)") from error


def create_timm_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Create a timm model (or a custom CNN by ``package.module:factory``, called with timm's keyword
    arguments) without classifier and pooling, ready to be made sparse."""
    options = {"num_classes": 0, "global_pool": "", **kwargs}
    if is_factory_path(name):
        return create_model(name, **options)
    try:
        return create_model(name, **options)
    except (AssertionError, ValueError, TypeError, NotImplementedError) as error:
        if "global_pool" in kwargs or isinstance(error, EncoderSpecError):
            raise
        # some models refuse to drop their pooling ("Cannot disable pooling"); it is never run anyway:
        # the features come from forward_intermediates, before any head
        options.pop("global_pool")
        try:
            model = create_model(name, **options)
        except Exception:
            raise error from None
        logger.info("%s does not allow global_pool=''; built with its own pooling, which the features never use",
                    name)
        return model


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


def _channel_candidates(model: nn.Module) -> List[int]:
    """Input channel counts to try, most likely first: the first convolution's (wrong when a stem
    rearranges pixels first, as TResNet's space-to-depth does), the model's own record, then RGB."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    config = getattr(model, "pretrained_cfg", None) or {}
    found = [first_conv.in_channels if first_conv is not None else None, getattr(model, "in_chans", None),
             (config.get("input_size") or (None,))[0], 3]
    return list(dict.fromkeys(int(c) for c in found if c))


def _dry_run(model: nn.Module, size: int) -> Tuple[int, Set[int]]:
    """Run the feature forward once on a zero image (no hooks yet): (the input channels it takes, the ids of
    the modules that ran and of their ancestors: a container may be sliced or indexed rather than called,
    as timm does with stages). A model that cannot run at all is refused with its own error."""
    errors = []
    for in_chans in _channel_candidates(model):
        try:
            return in_chans, _modules_called(model, in_chans, size)
        except Exception as error:  # the wrong channel count, or a model that cannot run at this size
            errors.append(f"{in_chans} channels: {describe_error(error)}")
    raise UnsupportedLayerError(f"cannot run {type(model).__name__}.forward_intermediates on a {size}x{size} image "
                                f"({'; '.join(errors)})")


def _modules_called(model: nn.Module, in_chans: int, size: int) -> Set[int]:
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


def _parameters_without_gradient(model: nn.Module, in_chans: int, size: int,
                                 candidates: Dict[str, nn.Parameter]) -> List[str]:
    """The names of those ``candidates`` that no feature map depends on, found by one forward on a zero
    image in eval mode (running statistics untouched) and one autograd pass. The candidates are the
    parameters of modules the feature forward never calls; a parent module that reads a child's parameter
    without calling the child keeps that parameter out of the answer."""
    if not candidates:
        return []
    was_training = model.training
    device = next(iter(candidates.values())).device
    try:
        model.eval()
        with torch.enable_grad():
            features = model.forward_intermediates(torch.zeros(1, in_chans, size, size, device=device),
                                                   indices=NUM_LEVELS, intermediates_only=True)
            total = sum(feature.float().sum() for feature in features)
            if not total.requires_grad:  # every parameter the features use is frozen already
                return list(candidates)
            gradients = torch.autograd.grad(total, list(candidates.values()), allow_unused=True)
    finally:
        model.train(was_training)
    return [name for name, gradient in zip(candidates, gradients) if gradient is None]


def verify_with_fallbacks(model: nn.Module, context: MaskContext, in_chans: int, ratio: int,
                          max_fallbacks: int = 16) -> None:
    """The build-time probe; a layer it finds pooling over all positions is given the channel-attention
    rule (visible-mean rescaling: right for any ``x * g(mean(x))`` block written inline, such as a
    squeeze-excitation without a timm class) and probed again. A layer the rule does not fix is refused
    with the probe's first error."""
    names = {id(m): n for n, m in model.named_modules()}
    tried: Dict[int, UnsupportedLayerError] = {}   # id of any module inside a rescaled one -> its error
    while True:
        try:
            verify_sparse_encoder(model, context, in_chans, ratio)
            return
        except UnsupportedLayerError as error:
            module = error.module
            if id(module) in tried:  # the rescaled block (or a layer inside it) still fails: not channel attention
                raise tried[id(module)] from None
            if module is None or not error.depends_on_masked or len(tried) >= max_fallbacks:
                raise
            tried.update({id(inner): error for inner in module.modules()})
            add_visible_mean_hooks(module, context)
            logger.info("'%s' (%s) pools over all positions in its own forward: trying the channel-attention "
                        "rule (means over visible positions)", names.get(id(module), "?"), type(module).__name__)


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
        self.context = MaskContext()
        self.in_chans, called = _dry_run(model, 4 * self.downsample_ratio)
        # parameters of modules the feature forward never runs (e.g. a classifier head's norm): a
        # checkpoint may lack them without consequence
        uncalled_state = [
            (f"{module_name}.{key}" if module_name else key, value)
            for module_name, module in model.named_modules() if id(module) not in called
            for key, value in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))]
        self.unused_state_keys: List[str] = [key for key, _ in uncalled_state]
        # ...and those parameters are frozen: they never get a gradient, which DistributedDataParallel
        # refuses (by default it waits for a gradient of every trainable parameter), and were never
        # trained anyway. ConvNeXt's head norm and EfficientNet's conv_head are such parameters.
        candidates = {key: value for key, value in uncalled_state
                      if isinstance(value, nn.Parameter) and value.requires_grad}
        frozen = _parameters_without_gradient(model, self.in_chans, 4 * self.downsample_ratio, candidates)
        for name in frozen:
            candidates[name].requires_grad_(False)
        if frozen:
            logger.info("%d parameter tensor(s) no feature map uses are frozen: %s", len(frozen), ", ".join(frozen))
        sparsify_(model, self.context, sync_bn=sync_bn, called=called)
        if verify:
            verify_with_fallbacks(model, self.context, self.in_chans, self.downsample_ratio)
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
