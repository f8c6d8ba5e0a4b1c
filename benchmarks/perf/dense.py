"""Variant (b) of the benchmark: the dense floor of a masked-dense SparK.

Why it exists: sparkmim simulates sparse convolution with dense ops, so the fastest it can possibly
be is the same network with no masking at all. This model runs the same timm encoder (plain
layers), the same densify stage (plain norms, projections; no mask-token selection), the same
decoder and a per-patch-normalised L2 loss over all patches. It is a timing floor, not a training
method. Parameter names follow :class:`sparkmim.SparK` (without the mask tokens).
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from sparkmim.model.decoder import LightDecoder, densify_projection
from sparkmim.model.patches import patchify
from sparkmim.sparse.encoder import NUM_LEVELS, create_timm_encoder
from sparkmim.utils.precision import widened


class DenseEncoder(nn.Module):
    """Holds the plain timm model under ``model`` so state-dict keys match ``SparK.encoder.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def _dense_norm(kind: str, channels: int) -> nn.Module:
    from timm.layers.norm import LayerNorm2d
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return LayerNorm2d(channels, eps=1e-6)
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"densify_norm must be 'bn', 'ln' or 'identity', got '{kind}'")


def has_batchnorm(model: nn.Module) -> bool:
    """What SparK's densify_norm='auto' looks at: BatchNorm CNNs get 'bn', others 'ln'."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class DenseFloor(nn.Module):
    """Encoder + densify + decoder + loss, all positions visible; ``forward(images)`` returns the loss."""

    def __init__(self, model: nn.Module, decoder_width: int = 768, densify_norm: str = "auto") -> None:
        super().__init__()
        info = model.feature_info
        levels = (info.get_dicts() if hasattr(info, "get_dicts") else [dict(d) for d in info])[-NUM_LEVELS:]
        channels = [int(level["num_chs"]) for level in levels]
        self.downsample_ratio = int(levels[-1]["reduction"])
        if densify_norm == "auto":
            densify_norm = "bn" if has_batchnorm(model) else "ln"
        self.densify_norm = densify_norm
        self.encoder = DenseEncoder(model)
        self.decoder = LightDecoder(self.downsample_ratio, width=decoder_width)
        self.densify_norms = nn.ModuleList()
        self.densify_projs = nn.ModuleList()
        width = decoder_width
        for level, chs in enumerate(reversed(channels)):
            self.densify_norms.append(_dense_norm(densify_norm, chs))
            self.densify_projs.append(densify_projection(level, chs, width))
            width //= 2

    def forward(self, images: torch.Tensor, active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``active`` is accepted for a uniform call signature and ignored (everything is visible)."""
        features: List[torch.Tensor] = list(self.encoder.model.forward_intermediates(
            images, indices=NUM_LEVELS, intermediates_only=True))
        dense = [proj(norm(feature)) for feature, norm, proj in
                 zip(reversed(features), self.densify_norms, self.densify_projs)]
        prediction = patchify(widened(self.decoder(dense)), self.downsample_ratio)
        target = patchify(widened(images), self.downsample_ratio)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return (prediction - (target - mean) / std).square().mean()


def build_dense(encoder: str, input_size: Union[int, Sequence[int]] = 224, decoder_width: int = 768,
                densify_norm: str = "auto", encoder_kwargs: Optional[dict] = None) -> DenseFloor:
    """The dense floor for a timm model name. ``input_size`` is only checked against the stride."""
    model = create_timm_encoder(encoder, **(encoder_kwargs or {}))
    floor = DenseFloor(model, decoder_width=decoder_width, densify_norm=densify_norm)
    sizes = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if any(s % floor.downsample_ratio for s in sizes):
        raise ValueError(f"input size {sizes} is not a multiple of the encoder's stride {floor.downsample_ratio}")
    return floor
