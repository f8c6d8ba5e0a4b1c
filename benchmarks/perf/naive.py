"""Variant (c) of the benchmark: a naive masked SparK, in the style of the paper's reference code.

Why it exists: it is the baseline that sparkmim's core is measured against (ratio c/a) and an
independent oracle for its numbers. It computes the same loss as :class:`sparkmim.SparK` for the
same weights, input and mask, but the way the reference implementation does it:

- the visible mask is re-expanded with ``repeat_interleave`` in every layer (no cache);
- every norm gathers the visible positions with ``nonzero`` + boolean indexing, normalises them
  with the 1-D norm, and scatters them back into a zero tensor (a host-device sync per norm on GPU);
- the random mask is drawn on the host and copied to the device.

Parameter names are those of :class:`sparkmim.SparK`, so ``naive.load_state_dict(spark.state_dict())``
gives both models the same weights. Supported layers: those of ResNet- and ConvNeXt-style timm CNNs
(convolutions, pooling, BatchNorm, LayerNorm in both layouts, Linear on feature maps, activations).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from sparkmim.model.decoder import LightDecoder, densify_projection
from sparkmim.model.patches import patchify
from sparkmim.sparse.encoder import NUM_LEVELS, create_timm_encoder
from sparkmim.utils.precision import widened


class NaiveMask:
    """The visible mask (B, 1, h, w) shared by the naive layers of one model during its forward."""

    def __init__(self) -> None:
        self.active: Optional[torch.Tensor] = None

    def expanded(self, height: int, width: int) -> torch.Tensor:
        """Re-expand the mask to (B, 1, height, width) with repeat_interleave, every call (as the reference)."""
        if self.active is None:
            raise RuntimeError("a naive masked layer ran outside NaiveSparK.forward (no mask set)")
        rep_h, rep_w = height // self.active.shape[-2], width // self.active.shape[-1]
        return self.active.repeat_interleave(rep_h, dim=2).repeat_interleave(rep_w, dim=3)

    def visible_index(self, height: int, width: int) -> Tuple[torch.Tensor, ...]:
        """(b, h, w) indices of the visible positions via nonzero (a host-device sync on GPU)."""
        return self.expanded(height, width).squeeze(1).nonzero(as_tuple=True)


class _MaskedOutput:
    """The reference's way of keeping masked positions at zero after a dense layer: its output times the
    mask, expanded afresh. Comes first in the bases, before the dense layer it wraps."""

    mask: NaiveMask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)  # type: ignore[misc]  # the dense layer's forward, next in the MRO
        return out * self.mask.expanded(out.shape[2], out.shape[3])


class NaiveConv2d(_MaskedOutput, nn.Conv2d):
    """Dense convolution, then the output multiplied by the freshly expanded mask."""

    def __init__(self, dense: nn.Conv2d, mask: NaiveMask) -> None:
        super().__init__(dense.in_channels, dense.out_channels, dense.kernel_size, stride=dense.stride,
                         padding=dense.padding, dilation=dense.dilation, groups=dense.groups,
                         bias=dense.bias is not None, padding_mode=dense.padding_mode)
        self.mask = mask


class NaiveMaxPool2d(_MaskedOutput, nn.MaxPool2d):
    def __init__(self, dense: nn.MaxPool2d, mask: NaiveMask) -> None:
        super().__init__(dense.kernel_size, dense.stride, dense.padding, dense.dilation,
                         return_indices=dense.return_indices, ceil_mode=dense.ceil_mode)
        self.mask = mask


class NaiveAvgPool2d(_MaskedOutput, nn.AvgPool2d):
    def __init__(self, dense: nn.AvgPool2d, mask: NaiveMask) -> None:
        super().__init__(dense.kernel_size, dense.stride, dense.padding, ceil_mode=dense.ceil_mode,
                         count_include_pad=dense.count_include_pad, divisor_override=dense.divisor_override)
        self.mask = mask


class NaiveBatchNorm(nn.BatchNorm1d):
    """BatchNorm of a (B, C, H, W) map over its visible positions: gather (N, C), BatchNorm1d, scatter."""

    def __init__(self, num_features: int, mask: NaiveMask, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = self.mask.visible_index(x.shape[2], x.shape[3])
        bhwc = x.permute(0, 2, 3, 1)
        normalised = super().forward(bhwc[index])
        out = torch.zeros_like(bhwc, dtype=normalised.dtype)  # CUDA autocast runs norms in float32
        out[index] = normalised
        return out.permute(0, 3, 1, 2)


class NaiveLayerNorm(nn.LayerNorm):
    """LayerNorm over channels at visible positions (gather, normalise, scatter), BCHW or BHWC maps."""

    def __init__(self, num_channels: int, mask: NaiveMask, eps: float, channels_first: bool) -> None:
        super().__init__(num_channels, eps=eps)
        self.mask = mask
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        bhwc = x.permute(0, 2, 3, 1) if self.channels_first else x
        index = self.mask.visible_index(bhwc.shape[1], bhwc.shape[2])
        normalised = super().forward(bhwc[index])
        out = torch.zeros_like(bhwc, dtype=normalised.dtype)  # CUDA autocast runs norms in float32
        out[index] = normalised
        return out.permute(0, 3, 1, 2) if self.channels_first else out


class NaiveLinear(nn.Linear):
    """Linear layer; on a channels-last feature map (B, H, W, C) its output is re-masked."""

    def __init__(self, dense: nn.Linear, mask: NaiveMask) -> None:
        super().__init__(dense.in_features, dense.out_features, bias=dense.bias is not None)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if out.dim() != 4:
            return out
        return out * self.mask.expanded(out.shape[1], out.shape[2]).permute(0, 2, 3, 1)


def _layernorm_types() -> Tuple[type, ...]:
    from timm.layers.norm import LayerNorm2d
    return (LayerNorm2d,)


PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU)


def _naive_module(module: nn.Module, mask: NaiveMask, path: str) -> Optional[nn.Module]:
    """The naive replacement of one module, or None to keep it (and convert its children)."""
    from timm.layers.drop import DropPath
    if isinstance(module, nn.Conv2d):
        return NaiveConv2d(module, mask)
    if isinstance(module, nn.MaxPool2d):
        return NaiveMaxPool2d(module, mask)
    if isinstance(module, nn.AvgPool2d):
        return NaiveAvgPool2d(module, mask)
    if type(module) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return NaiveBatchNorm(module.num_features, mask, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
    if isinstance(module, _layernorm_types()):
        return NaiveLayerNorm(module.normalized_shape[0], mask, module.eps, channels_first=True)
    if isinstance(module, nn.LayerNorm):  # channels-last (timm's LayerNorm in ConvNeXt blocks without conv_mlp)
        return NaiveLayerNorm(module.normalized_shape[0], mask, module.eps, channels_first=False)
    if isinstance(module, nn.Linear):
        return NaiveLinear(module, mask)
    if isinstance(module, PASS_THROUGH + (DropPath,)) or list(module.children()):
        return None
    if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
        raise ValueError(f"the naive reference has no rule for '{path}' ({type(module).__name__}); "
                         f"it supports ResNet- and ConvNeXt-style timm CNNs")
    return None


def naive_convert_(model: nn.Module, mask: NaiveMask, prefix: str = "") -> nn.Module:
    """Replace the layers of a dense timm CNN by their naive masked versions (fresh modules, same names)."""
    for name, child in list(model.named_children()):
        path = f"{prefix}{name}"
        replacement = _naive_module(child, mask, path)
        if replacement is None:
            naive_convert_(child, mask, prefix=f"{path}.")
        else:
            replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement)
    return model


class NaiveEncoder(nn.Module):
    """Holds the naive timm model under ``model`` so state-dict keys match ``SparK.encoder.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class NaiveSparK(nn.Module):
    """SparK computed the reference way; ``forward(images, active=None)`` returns the loss tensor."""

    def __init__(self, model: nn.Module, input_size: Union[int, Sequence[int]] = 224, mask_ratio: float = 0.6,
                 decoder_width: int = 768, densify_norm: str = "bn") -> None:
        super().__init__()
        info = model.feature_info
        levels = (info.get_dicts() if hasattr(info, "get_dicts") else [dict(d) for d in info])[-NUM_LEVELS:]
        channels = [int(level["num_chs"]) for level in levels]
        self.downsample_ratio = int(levels[-1]["reduction"])
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.grid = (size[0] // self.downsample_ratio, size[1] // self.downsample_ratio)
        self.mask_ratio = mask_ratio
        self.mask_state = NaiveMask()
        self.encoder = NaiveEncoder(naive_convert_(model, self.mask_state))
        self.decoder = LightDecoder(self.downsample_ratio, width=decoder_width)
        self.densify_norms = nn.ModuleList()
        self.densify_projs = nn.ModuleList()
        self.mask_tokens = nn.ParameterList()
        width = decoder_width
        for level, chs in enumerate(reversed(channels)):
            self.mask_tokens.append(nn.Parameter(torch.zeros(1, chs, 1, 1)))
            if densify_norm == "bn":
                self.densify_norms.append(NaiveBatchNorm(chs, self.mask_state))
            elif densify_norm == "ln":
                self.densify_norms.append(NaiveLayerNorm(chs, self.mask_state, eps=1e-6, channels_first=True))
            else:
                self.densify_norms.append(nn.Identity())
            self.densify_projs.append(densify_projection(level, chs, width))
            width //= 2

    def mask(self, batch: int, device: torch.device) -> torch.Tensor:
        """A random visible mask drawn on the host and copied to the device (as the reference)."""
        h, w = self.grid
        keep = round(h * w * (1 - self.mask_ratio))
        index = torch.rand(batch, h * w).argsort(dim=1)[:, :keep].to(device)
        return torch.zeros(batch, h * w, dtype=torch.bool, device=device).scatter_(1, index, True).view(batch, 1, h, w)

    def forward(self, images: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        if active is None:
            active = self.mask(images.shape[0], images.device)
        active = active.bool()
        ratio = self.downsample_ratio
        self.mask_state.active = active
        try:
            full = active.repeat_interleave(ratio, 2).repeat_interleave(ratio, 3)
            features: List[torch.Tensor] = list(self.encoder.model.forward_intermediates(
                images * full, indices=NUM_LEVELS, intermediates_only=True))
            features.reverse()
            current = active
            dense = []
            for level, feature in enumerate(features):
                feature = self.densify_norms[level](feature)
                token = self.mask_tokens[level].to(feature.dtype).expand_as(feature)
                feature = torch.where(current.expand_as(feature), feature, token)
                dense.append(self.densify_projs[level](feature))
                current = current.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        finally:
            self.mask_state.active = None
        prediction = patchify(widened(self.decoder(dense)), ratio)
        target = patchify(widened(images), ratio)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((prediction - (target - mean) / std) ** 2).mean(dim=2)
        # in the loss's dtype: the reference's int count makes ``+ 1e-8`` a float32 sum, which a float64
        # run must not have
        masked = active.logical_not().to(per_patch.dtype).view(active.shape[0], -1)
        return (per_patch * masked).sum() / (masked.sum() + 1e-8)


def build_naive(encoder: str, input_size: Union[int, Sequence[int]] = 224, mask_ratio: float = 0.6,
                decoder_width: int = 768, densify_norm: str = "bn",
                encoder_kwargs: Optional[dict] = None) -> NaiveSparK:
    """The naive reference for a timm model name (``densify_norm``: 'bn', 'ln' or 'identity';
    pass the resolved value of the SparK it is compared with)."""
    model = create_timm_encoder(encoder, **(encoder_kwargs or {}))
    return NaiveSparK(model, input_size=input_size, mask_ratio=mask_ratio, decoder_width=decoder_width,
                      densify_norm=densify_norm)


def naive_like(spark: nn.Module, encoder: str, encoder_kwargs: Optional[dict] = None) -> NaiveSparK:
    """A naive reference with exactly ``spark``'s configuration and weights (an oracle for it)."""
    naive = build_naive(encoder, input_size=spark.input_size, mask_ratio=spark.mask_ratio,
                        decoder_width=spark.decoder.width, densify_norm=spark.densify_norm,
                        encoder_kwargs=encoder_kwargs)
    missing, unexpected = naive.load_state_dict(spark.state_dict(), strict=False)
    unused = {f"encoder.model.{key}" for key in spark.encoder.unused_state_keys}
    if unexpected or set(missing) - unused:
        raise ValueError(f"naive reference and SparK disagree on parameters: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return naive.to(next(spark.parameters()).device)
