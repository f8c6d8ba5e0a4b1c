"""How each layer type of a dense CNN becomes submanifold-sparse.

Every rule serves one invariant: at every layer output the masked positions are exactly zero, and
statistics (BatchNorm, GroupNorm, global pooling in channel attention) use visible positions only.

- conv / pooling / LayerNorm / GRN / Linear-on-feature-map: the dense op, then a forward hook that
  re-masks its output (instance hooks: the public extension point; no class is patched, and the
  module and its state-dict keys stay exactly timm's);
- BatchNorm / GroupNorm (and timm's Act variants): replaced by modules that take over the same
  parameter and buffer tensors and compute statistics over visible positions;
- average pooling that leaves padding out of its count: divided by the visible share of each window,
  so masked positions are left out like padding;
- squeeze-excitation style channel attention: a pre-hook scales the input by H*W / n_visible per
  sample and a hook divides the output by the same factor. These blocks compute ``x * g(mean(x))``;
  with masked positions at zero, ``mean(c * x)`` with that ``c`` is the mean over visible positions,
  and ``(c * x) * g(.) / c`` is the block's output with that visible mean. Attention that returns only
  the gate ``g(mean(x))`` (selective kernels) gets the pre-hook alone. ResNeSt's split attention
  takes the mean inline, so the layer after it (``fc1``) gets a pre-hook dividing the pooled vector by
  the visible share; a BatchNorm on such pooled (1x1) vectors normalises them like the dense one;
- zero padding needs nothing (it adds zeros, as a convolution's padding does);
- any other layer without children (activations that map 0 elsewhere, per-channel scales, affine
  blocks, upsampling, transposed convolutions, ...), or whose only children are activations
  (metaformer's ``StarReLU``, ``scale * relu(x) ** 2 + bias``, computes with its own parameters): its
  output is re-masked wherever it lies on the mask grid (channels first or last, or flattened tokens)
  and left alone where it is pooled. Such a layer may still compute statistics over all positions; the build-time probe
  (:mod:`sparkmim.sparse.probe`) runs every converted encoder and refuses it, naming the layer;
- a map that no longer lines up with the mask grid (unpadded convolutions shrink it) is refused at
  its layer, with the sizes.
"""
from typing import Any, Callable, Dict, Optional, Set, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .context import MaskContext
from .norms import SparseBatchNorm2d, SparseBatchNormAct2d, SparseGroupNorm, SparseGroupNormAct


class UnsupportedLayerError(TypeError):
    """The encoder contains a layer whose dense behaviour would break the sparse invariant.

    ``module``: the layer (when known), so the build can try another rule for it before giving up."""

    def __init__(self, message: str, module: Optional[nn.Module] = None, depends_on_masked: bool = False) -> None:
        super().__init__(message)
        self.module = module
        self.depends_on_masked = depends_on_masked


def _timm_types() -> Dict[str, Tuple[Type[nn.Module], ...]]:
    """timm classes with a dedicated rule (imported here so the lookup stays in one place)."""
    from timm.layers.drop import DropPath
    from timm.layers.eca import CecaModule, EcaModule
    from timm.layers.grn import GlobalResponseNorm
    from timm.layers.norm import LayerNorm2d, LayerNorm2dFp32
    from timm.layers.norm_act import BatchNormAct2d, GroupNormAct, SyncBatchNormAct
    from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite as EfficientNetSqueezeExcite
    from timm.models.hgnet import EseModule
    from timm.models.senet import SEModule as LegacySEModule
    from timm.layers.selective_kernel import SelectiveKernelAttn
    from timm.layers.split_attn import SplitAttn
    return {
        "channel_attention": (SEModule, EffectiveSEModule, EcaModule, CecaModule, EfficientNetSqueezeExcite,
                              EseModule, LegacySEModule),
        "gate_from_mean": (SelectiveKernelAttn,),
        "split_attention": (SplitAttn,),
        "batchnorm_act": (BatchNormAct2d, SyncBatchNormAct),
        "groupnorm_act": (GroupNormAct,),
        "layernorm_channels_first": (LayerNorm2d, LayerNorm2dFp32),
        "grn": (GlobalResponseNorm,),
        "drop_path": (DropPath,),
    }


def _misaligned(path: str, module: nn.Module, output: torch.Tensor, context: MaskContext,
                attention: Optional[str] = None) -> UnsupportedLayerError:
    grid = "x".join(str(int(n)) for n in context.active.shape[-2:])
    if attention is not None:
        return UnsupportedLayerError(
            f"cannot make '{path}' ({type(module).__module__}.{type(module).__name__}) sparse: it belongs to the "
            f"attention block {attention}, whose tokens {tuple(output.shape)} are not the positions of the {grid} "
            "mask grid (windows, or keys pooled or reduced over the map); attention would let masked tokens "
            "reach visible ones, which sparse convolution cannot prevent, so SparK cannot pre-train this model",
            module)
    return UnsupportedLayerError(
        f"cannot make '{path}' ({type(module).__module__}.{type(module).__name__}) sparse: its output "
        f"{tuple(output.shape)} does not line up with the {grid} mask grid (a map whose sides are not the same "
        "whole multiple of the grid's, e.g. after unpadded 'valid' convolutions or a pooling that crops), so "
        "masked patches cannot be followed through it", module)


class ReMaskOutput:
    """Forward hook: multiply a layer's output by the visible mask at the output's resolution.

    ``layout``: ``"bchw"`` (conv, pooling), ``"bhwc"`` (channels-last norms), or ``"auto"`` (any other
    layer: found from the output's shape, see :meth:`MaskContext.layout_of`). A pooled (1x1) output is
    left alone: it has no positions, and whether it pooled over visible positions only is the probe's
    to check.

    In place for the known layer types: they do not keep their own output for backward, and a fresh
    output-size tensor per layer costs more than the multiply (on CPU the allocation page-faults).
    Out of place for other layers (an activation such as a sigmoid keeps its output for backward)."""

    def __init__(self, context: MaskContext, path: str, layout: str = "bchw", attention: Optional[str] = None) -> None:
        self.context = context
        self.path = path
        self.layout = layout
        self.attention = attention  # the attention block the layer belongs to, for the refusal's wording

    # what a layer of a known layout may also produce: pooled vectors, and (channels-last layers) tokens
    ALSO_ACCEPTED = {"bchw": ("pooled",), "bhwc": ("pooled", "bnc")}

    def __call__(self, module: nn.Module, inputs: tuple, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            return output
        if self.layout == "auto":
            found = self.context.layout_of(output)
        else:
            found = self.context.layout_of(output, prefer=self.layout)
            if found not in (self.layout,) + self.ALSO_ACCEPTED[self.layout]:
                found = None
        if found == "pooled":
            return output
        if found is None:
            raise _misaligned(self.path, module, output, self.context, self.attention)
        mask = self.context.mask_for(output, found)
        return output * mask if self.layout == "auto" else output.mul_(mask)


class DivideByVisibleShare:
    """Forward hook for ``AvgPool2d(count_include_pad=False)``: that pooling leaves padding out of each
    window's count but counts masked positions; dividing by the pooled mask (the visible share of the
    non-padding window) leaves them out too, then the output is re-masked."""

    def __init__(self, context: MaskContext, path: str) -> None:
        self.context = context
        self.remask = ReMaskOutput(context, path)

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        share = F.avg_pool2d(self.context.mask_like(inputs[0]), module.kernel_size, module.stride, module.padding,
                             module.ceil_mode, module.count_include_pad, module.divisor_override)
        return self.remask(module, inputs, output / share.clamp_min(torch.finfo(share.dtype).tiny))


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


class PooledToVisibleMean:
    """Forward pre-hook for the layer right after a mean over the whole map written inline (ResNeSt's
    ``SplitAttn`` pools, then ``fc1``): masked positions are zero, so that mean is the visible mean times
    the visible share; dividing by the share (per sample, from the mask grid: every patch covers as many
    positions) makes it the visible mean."""

    def __init__(self, context: MaskContext) -> None:
        self.context = context

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        pooled = args[0]
        share = self.context.active.to(pooled.dtype).mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
        return (pooled / share,) + tuple(args[1:])


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


def _is_zero_padding(module: nn.Module) -> bool:
    """Constant padding with zeros: it adds what a convolution's own padding adds (BiT, NASNet)."""
    return isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d)) and float(getattr(module, "value", 0.0)) == 0.0


def _is_empty_container(module: nn.Module) -> bool:
    """An empty Sequential is an identity (timm uses one for plain shortcuts)."""
    return isinstance(module, nn.Sequential) and len(module) == 0


def _is_activation(module: nn.Module) -> bool:
    origin = type(module).__module__
    return origin.startswith("torch.nn.modules.activation") or origin.startswith("timm.layers.activations")


def _attention_block(module: nn.Module, path: str, outer: Optional[str]) -> Optional[str]:
    """``"'path' (Class)"`` for a block named as attention (self-attention, window attention...), else the
    outer one's; only the wording of a refusal depends on it."""
    name = type(module).__name__.lower()
    return f"'{path}' ({type(module).__name__})" if "attention" in name or "attn" in name else outer


def _is_parametrised_activation(module: nn.Module, types: Dict[str, Tuple[Type[nn.Module], ...]]) -> bool:
    """A module with parameters of its own whose children are all plain activations or no-ops, such as
    metaformer's ``StarReLU`` (``scale * relu(x) ** 2 + bias``): it computes inline with its own parameters
    like a leaf, so it gets the leaf's rule, not only its children's."""
    children = list(module.children())
    return bool(children) and any(True for _ in module.parameters(recurse=False)) and all(
        isinstance(child, POINTWISE_SAFE + types["drop_path"]) or _is_activation(child) for child in children)


def sparsify_(model: nn.Module, context: MaskContext, sync_bn: bool = False,
              called: Optional[Set[int]] = None, prefix: str = "", attention: Optional[str] = None) -> None:
    """Convert ``model`` in place so that it runs submanifold-sparse under ``context``'s mask.

    ``called``: ids of the modules that run in the feature forward; others (e.g. a classifier head)
    are left untouched, as they never see a masked map. ``attention``: the attention block ``model``
    belongs to, if any (named in refusals)."""
    types = _timm_types()
    for name, child in list(model.named_children()):
        path = f"{prefix}{name}"
        if called is not None and id(child) not in called:
            continue
        replacement = _convert_one(child, path, context, sync_bn, types, called, attention)
        if replacement is not None:
            setattr(model, name, replacement)


def _convert_one(module: nn.Module, path: str, context: MaskContext, sync_bn: bool,
                 types: Dict[str, Tuple[Type[nn.Module], ...]], called: Optional[Set[int]],
                 attention: Optional[str] = None) -> Optional[nn.Module]:
    """Apply the rule for one module; return a replacement module or None (converted in place)."""
    attention = _attention_block(module, path, attention)
    remask: Callable[[str], Any] = lambda layout: module.register_forward_hook(
        ReMaskOutput(context, path, layout, attention))
    if isinstance(module, types["channel_attention"]):
        add_visible_mean_hooks(module, context)
    elif isinstance(module, types["gate_from_mean"]):
        module.register_forward_pre_hook(VisibleMeanInput(context))
    elif isinstance(module, types["split_attention"]):
        module.fc1.register_forward_pre_hook(PooledToVisibleMean(context))
        sparsify_(module, context, sync_bn, called, prefix=f"{path}.", attention=attention)
    elif isinstance(module, types["batchnorm_act"]):
        return SparseBatchNormAct2d.from_dense(module, context, sync_bn)
    elif isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return SparseBatchNorm2d.from_dense(module, context, sync_bn)
    elif isinstance(module, types["groupnorm_act"]):
        return SparseGroupNormAct(module, context)
    elif isinstance(module, nn.GroupNorm):
        return SparseGroupNorm(module, context)
    elif isinstance(module, types["layernorm_channels_first"]):
        remask("bchw")
    elif isinstance(module, nn.LayerNorm):
        remask("bhwc")
    elif isinstance(module, types["grn"]):
        remask("bhwc" if getattr(module, "channel_dim", 1) == -1 else "bchw")
    elif isinstance(module, nn.AvgPool2d) and not module.count_include_pad:
        module.register_forward_hook(DivideByVisibleShare(context, path))
    elif isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        remask("bchw")
    elif isinstance(module, nn.Linear):
        remask("bhwc")
    elif isinstance(module, POINTWISE_SAFE + types["drop_path"]) or _is_empty_container(module) \
            or _is_zero_padding(module) or (_is_activation(module) and _maps_zero_to_zero(module)):
        pass
    elif _is_parametrised_activation(module, types):
        remask("auto")
    elif len(list(module.children())) > 0:
        sparsify_(module, context, sync_bn, called, prefix=f"{path}.", attention=attention)
    else:  # any other layer: re-masked wherever its output lies on the grid; the probe checks the rest
        remask("auto")
    return None


def add_visible_mean_hooks(module: nn.Module, context: MaskContext) -> Tuple[Any, Any]:
    """The channel-attention rule (see the module docstring); returns the two hook handles."""
    return (module.register_forward_pre_hook(VisibleMeanInput(context)),
            module.register_forward_hook(VisibleMeanOutput(context)))
