"""How each layer type of a dense CNN becomes submanifold-sparse.

Every rule serves one invariant: at every layer output the masked positions are exactly zero, and
statistics (BatchNorm, GroupNorm, global pooling in channel attention) use visible positions only.

- conv / pooling / LayerNorm / GRN / Linear-on-feature-map: the dense op, then a forward hook that
  re-masks its output (instance hooks: the public extension point; no class is patched, and the
  module and its state-dict keys stay exactly timm's);
- BatchNorm / GroupNorm (and timm's Act variants): replaced by modules that take over the same
  parameter and buffer tensors and compute statistics over visible positions;
- squeeze-excitation style channel attention: a pre-hook scales the input by H*W / n_visible per
  sample and a hook divides the output by the same factor. These blocks compute ``x * g(mean(x))``;
  with masked positions at zero, ``mean(c * x)`` with that ``c`` is the mean over visible positions,
  and ``(c * x) * g(.) / c`` is the block's output with that visible mean;
- activations and dropout that map 0 to 0 need nothing;
- anything else is refused with the module path and type, never silently kept dense.
"""
from typing import Callable, Dict, Optional, Set, Tuple, Type

import torch
import torch.nn as nn

from .context import MaskContext
from .norms import SparseBatchNorm2d, SparseBatchNormAct2d, SparseGroupNorm, SparseGroupNormAct


class UnsupportedLayerError(TypeError):
    """The encoder contains a layer whose dense behaviour would break the sparse invariant."""


def _timm_types() -> Dict[str, Tuple[Type[nn.Module], ...]]:
    """timm classes with a dedicated rule (imported here so the lookup stays in one place)."""
    from timm.layers.drop import DropPath
    from timm.layers.eca import CecaModule, EcaModule
    from timm.layers.grn import GlobalResponseNorm
    from timm.layers.norm import LayerNorm2d, LayerNorm2dFp32
    from timm.layers.norm_act import BatchNormAct2d, GroupNormAct, SyncBatchNormAct
    from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite as EfficientNetSqueezeExcite
    return {
        "channel_attention": (SEModule, EffectiveSEModule, EcaModule, CecaModule, EfficientNetSqueezeExcite),
        "batchnorm_act": (BatchNormAct2d, SyncBatchNormAct),
        "groupnorm_act": (GroupNormAct,),
        "layernorm_channels_first": (LayerNorm2d, LayerNorm2dFp32),
        "grn": (GlobalResponseNorm,),
        "drop_path": (DropPath,),
    }


class ReMaskOutput:
    """Forward hook: multiply a layer's output by the visible mask at the output's resolution.

    In place: the hooked layers (conv, pooling, norms, linear) do not keep their own output for
    backward, and a fresh output-size tensor per layer costs more than the multiply (on CPU the
    allocation page-faults). Should a layer ever save its output, autograd refuses the in-place
    change with an error at backward; it cannot go wrong silently."""

    def __init__(self, context: MaskContext, path: str, channels_last: bool = False) -> None:
        self.context = context
        self.path = path
        self.channels_last = channels_last

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        try:
            mask = self.context.mask_like(output, self.channels_last)
        except ValueError as error:
            raise UnsupportedLayerError(
                f"cannot make '{self.path}' ({type(module).__name__}) sparse: it runs on a map coarser than the "
                f"mask grid, e.g. pooled inside an attention block sparkmim has no rule for ({error})") from error
        return output.mul_(mask)


class ReMaskLinearOutput(ReMaskOutput):
    """Forward hook for ``nn.Linear``: feature maps in channels-last layout (B, H, W, C) are re-masked;
    other uses (pooled vectors) are left alone."""

    def __init__(self, context: MaskContext, path: str) -> None:
        super().__init__(context, path, channels_last=True)

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if output.dim() != 4:
            return output
        return super().__call__(module, inputs, output)


def _visible_mean_factor(context: MaskContext, x: torch.Tensor) -> torch.Tensor:
    """Per-sample H*W / n_visible, shape (B, 1, 1, 1), in ``x``'s dtype."""
    mask = context.mask_like(x, dtype=torch.float32)
    visible = mask.sum(dim=(2, 3), keepdim=True)
    return (mask.shape[-1] * mask.shape[-2] / visible).to(x.dtype)


class VisibleMeanInput:
    """Forward pre-hook for channel attention: scale the input so its global mean is the visible mean."""

    def __init__(self, context: MaskContext) -> None:
        self.context = context

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * _visible_mean_factor(self.context, x),) + tuple(args[1:])


class VisibleMeanOutput:
    """Forward hook paired with :class:`VisibleMeanInput`: undo the input scaling on the output."""

    def __init__(self, context: MaskContext) -> None:
        self.context = context

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output / _visible_mean_factor(self.context, output)


POINTWISE_SAFE = (nn.Identity, nn.Dropout, nn.Dropout2d)


def _maps_zero_to_zero(module: nn.Module) -> bool:
    with torch.no_grad():
        try:
            probe = torch.zeros(1, 1, 1, 1, device=next(module.parameters(), torch.zeros(0)).device)
            return bool((module(probe) == 0).all())
        except Exception:  # a layer that cannot take a 1x1 map is not a pointwise activation
            return False


def _is_empty_container(module: nn.Module) -> bool:
    """An empty Sequential is an identity (timm uses one for plain shortcuts)."""
    return isinstance(module, nn.Sequential) and len(module) == 0


def _is_activation(module: nn.Module) -> bool:
    origin = type(module).__module__
    return origin.startswith("torch.nn.modules.activation") or origin.startswith("timm.layers.activations")


def sparsify_(model: nn.Module, context: MaskContext, sync_bn: bool = False,
              called: Optional[Set[int]] = None, prefix: str = "") -> None:
    """Convert ``model`` in place so that it runs submanifold-sparse under ``context``'s mask.

    ``called``: ids of the modules that run in the feature forward; others (e.g. a classifier head)
    are left untouched, as they never see a masked map."""
    types = _timm_types()
    for name, child in list(model.named_children()):
        path = f"{prefix}{name}"
        if called is not None and id(child) not in called:
            continue
        replacement = _convert_one(child, path, context, sync_bn, types, called)
        if replacement is not None:
            setattr(model, name, replacement)


def _convert_one(module: nn.Module, path: str, context: MaskContext, sync_bn: bool,
                 types: Dict[str, Tuple[Type[nn.Module], ...]], called: Optional[Set[int]]) -> Optional[nn.Module]:
    """Apply the rule for one module; return a replacement module or None (converted in place)."""
    remask: Callable[[bool], None] = lambda channels_last: module.register_forward_hook(
        ReMaskOutput(context, path, channels_last))
    if isinstance(module, types["channel_attention"]):
        module.register_forward_pre_hook(VisibleMeanInput(context))
        module.register_forward_hook(VisibleMeanOutput(context))
    elif isinstance(module, types["batchnorm_act"]):
        return SparseBatchNormAct2d.from_dense(module, context, sync_bn)
    elif isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return SparseBatchNorm2d.from_dense(module, context, sync_bn)
    elif isinstance(module, types["groupnorm_act"]):
        return SparseGroupNormAct(module, context)
    elif isinstance(module, nn.GroupNorm):
        return SparseGroupNorm(module, context)
    elif isinstance(module, types["layernorm_channels_first"]):
        remask(False)
    elif isinstance(module, nn.LayerNorm):
        remask(True)
    elif isinstance(module, types["grn"]):
        remask(getattr(module, "channel_dim", 1) == -1)
    elif isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        remask(False)
    elif isinstance(module, nn.Linear):
        module.register_forward_hook(ReMaskLinearOutput(context, path))
    elif isinstance(module, POINTWISE_SAFE + types["drop_path"]) or _is_empty_container(module):
        pass
    elif _is_activation(module):
        if not _maps_zero_to_zero(module):
            raise UnsupportedLayerError(
                f"cannot make '{path}' ({type(module).__module__}.{type(module).__name__}) sparse: this "
                f"activation maps 0 to a non-zero value on a feature map, which would fill masked positions")
    elif len(list(module.children())) > 0:
        sparsify_(module, context, sync_bn, called, prefix=f"{path}.")
    else:
        raise UnsupportedLayerError(
            f"cannot make '{path}' ({type(module).__module__}.{type(module).__name__}) sparse: sparkmim has no "
            f"rule for this layer type, and keeping it dense could mix masked positions into visible ones "
            f"or fill masked positions; add a rule in sparkmim/sparse/rules.py")
    return None
