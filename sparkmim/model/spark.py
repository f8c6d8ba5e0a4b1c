"""SparK: mask -> sparse encode -> densify -> decode -> loss on masked patches (one method each)."""
import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..sparse.context import upsample_mask
from ..sparse.encoder import SparseEncoder, make_sparse_encoder
from ..sparse.norms import CrossProcessBatchNorm2d, SparseBatchNorm2d, SparseLayerNorm2d
from ..utils.precision import widened
from .decoder import LightDecoder, densify_projection
from .patches import patchify, unpatchify
from .settings import SparKSettingError, check_input_size, check_mask_fits, check_mask_ratio, visible_patches

DENSIFY_NORMS = ("bn", "ln", "identity")


@dataclass
class SparKOutput:
    """What one SparK forward produces.

    loss: mean per-patch-normalised L2 over masked patches (scalar, differentiable);
    active: bool (B, 1, h, w), True = visible;
    prediction: the decoder's raw output (B, C, H, W) with C the encoder's input channels, per-patch
    normalised space (differentiable).

    ``reconstruction`` (the prediction de-normalised with each patch's own statistics, visible
    patches taken from the input) and ``masked_input`` (the input with masked patches zeroed) are
    detached image-size tensors that only visualisation needs; they are computed on first access
    rather than in every training step."""

    loss: torch.Tensor
    active: torch.Tensor
    prediction: torch.Tensor
    images: torch.Tensor = field(repr=False)
    patch_mean: torch.Tensor = field(repr=False)
    patch_std: torch.Tensor = field(repr=False)
    patch_size: int = field(repr=False, default=32)

    def _visible_pixels(self) -> torch.Tensor:
        return upsample_mask(self.active, self.images.shape[-2], self.images.shape[-1])

    @cached_property
    def reconstruction(self) -> torch.Tensor:
        with torch.no_grad():
            h, w = self.active.shape[-2:]
            prediction_bln = patchify(widened(self.prediction.detach()), self.patch_size)
            predicted = unpatchify(prediction_bln * self.patch_std + self.patch_mean, self.patch_size, h, w)
            return torch.where(self._visible_pixels(), self.images, predicted.to(self.images.dtype))

    @cached_property
    def masked_input(self) -> torch.Tensor:
        with torch.no_grad():
            return self.images * self._visible_pixels()


def _as_hw(size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """224, [224] or (192, 256) -> (height, width); numpy integers too, a float or a string is refused."""
    sides = [size] if not isinstance(size, (list, tuple)) else list(size)
    try:
        if len(sides) not in (1, 2) or any(isinstance(side, bool) for side in sides):
            raise TypeError
        height, width = operator.index(sides[0]), operator.index(sides[-1])
    except TypeError:
        raise SparKSettingError(f"input_size must be an integer or (height, width) integers, got {size!r}") from None
    return height, width


def random_visible_mask(batch: int, h: int, w: int, num_visible: int, device: torch.device,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, 1, h, w) bool, True = visible: ``num_visible`` patches per image, uniformly at random, drawn on
    ``device``. SparK's masking rule; also used by pictures that need a mask without a model."""
    scores = torch.rand(batch, h * w, device=device, generator=generator)
    keep = scores.argsort(dim=1)[:, :num_visible]
    active = torch.zeros(batch, h * w, dtype=torch.bool, device=device)
    return active.scatter_(1, keep, True).view(batch, 1, h, w)


class SparK(nn.Module):
    def __init__(self, encoder: SparseEncoder, input_size: Union[int, Sequence[int]] = 224, mask_ratio: float = 0.6,
                 decoder_width: int = 768, densify_norm: str = "auto", sync_bn: bool = False) -> None:
        super().__init__()
        check_mask_ratio(mask_ratio)
        self.encoder = encoder
        self.downsample_ratio = encoder.downsample_ratio
        self.input_size = _as_hw(input_size)
        self._check_size(*self.input_size)
        self.mask_ratio = mask_ratio
        check_mask_fits(self.input_size[0] // self.downsample_ratio, self.input_size[1] // self.downsample_ratio,
                        mask_ratio)
        if densify_norm == "auto":
            has_bn = any(isinstance(m, SparseBatchNorm2d) for m in encoder.modules())
            densify_norm = "bn" if has_bn else "ln"
        if densify_norm not in DENSIFY_NORMS:
            raise ValueError(f"densify_norm must be one of {DENSIFY_NORMS} or 'auto', got '{densify_norm}'")
        self.densify_norm = densify_norm
        # the decoder predicts every input channel (RGB, grayscale or multispectral bands); the loss covers all
        self.in_chans: int = encoder.in_chans
        self.decoder = LightDecoder(self.downsample_ratio, width=decoder_width, sync_bn=sync_bn,
                                    out_channels=self.in_chans)

        self.densify_norms = nn.ModuleList()
        self.densify_projs = nn.ModuleList()
        self.mask_tokens = nn.ParameterList()
        width = decoder_width
        for level, channels in enumerate(reversed(encoder.feature_channels)):  # coarsest first
            token = nn.Parameter(torch.zeros(1, channels, 1, 1))
            trunc_normal_(token, mean=0.0, std=0.02, a=-0.02, b=0.02)
            self.mask_tokens.append(token)
            self.densify_norms.append(self._make_norm(channels, sync_bn))
            self.densify_projs.append(densify_projection(level, channels, width))
            width //= 2

    def _make_norm(self, channels: int, sync_bn: bool) -> nn.Module:
        context = self.encoder.context
        if self.densify_norm == "bn":
            return SparseBatchNorm2d(channels, context, sync=sync_bn)
        if self.densify_norm == "ln":
            return SparseLayerNorm2d(channels, context)
        return nn.Identity()

    def _check_size(self, height: int, width: int) -> None:
        check_input_size(height, width, self.downsample_ratio)

    def config(self) -> Dict[str, Any]:
        """The settings that define this model's shapes (stored in checkpoints)."""
        return {"input_size": list(self.input_size), "mask_ratio": self.mask_ratio,
                "decoder_width": self.decoder.width, "densify_norm": self.densify_norm,
                "downsample_ratio": self.downsample_ratio}

    # --- 1. mask -------------------------------------------------------------------------------
    def num_visible(self, h: int, w: int) -> int:
        """Visible patches per image on an h x w grid; an error when none or all would be (see
        :func:`check_mask_fits`: images smaller than ``input_size`` can reach it)."""
        check_mask_fits(h, w, self.mask_ratio)
        return visible_patches(h, w, self.mask_ratio)

    def mask(self, batch: int, h: int, w: int, device: torch.device,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A random visible mask (B, 1, h, w) with exactly round(h*w*(1-mask_ratio)) visible patches per image.

        Drawn on ``device`` (no host-device copy); pass a generator on that device for reproducibility."""
        return random_visible_mask(batch, h, w, self.num_visible(h, w), device, generator)

    # --- 2. encode -----------------------------------------------------------------------------
    def encode(self, images: torch.Tensor, active: torch.Tensor) -> List[torch.Tensor]:
        """The 4 sparse feature maps, finest (stride 4) first; masked positions are exactly zero."""
        return self.encoder(images, active)

    # --- 3. densify ----------------------------------------------------------------------------
    def densify(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Coarsest first: visible-only norm, mask tokens at masked positions, projection to decoder width."""
        context = self.encoder.context
        dense = []
        for level, feature in enumerate(reversed(features)):
            feature = self.densify_norms[level](feature)
            visible = context.mask_like(feature, dtype=torch.bool)
            feature = torch.where(visible, feature, self.mask_tokens[level].to(feature.dtype))
            dense.append(self.densify_projs[level](feature))
        return dense

    # --- 4. decode -----------------------------------------------------------------------------
    def decode(self, dense_features: List[torch.Tensor]) -> torch.Tensor:
        return self.decoder(dense_features)

    # --- 5. loss -------------------------------------------------------------------------------
    def patch_targets(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-patch normalised targets with each patch's mean and std (unbiased variance + 1e-6, as the reference)."""
        patches = patchify(widened(images), self.downsample_ratio)
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return (patches - mean) / std, mean, std

    def loss(self, prediction_bln: torch.Tensor, target_bln: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over masked patches only."""
        per_patch = (prediction_bln - target_bln).square().mean(dim=-1)  # (B, L)
        masked = (~active).flatten(1).to(per_patch.dtype)
        return (per_patch * masked).sum() / (masked.sum() + 1e-8)

    def forward(self, images: torch.Tensor, active: Optional[torch.Tensor] = None) -> SparKOutput:
        batch, _, height, width = images.shape
        self._check_size(height, width)
        h, w = height // self.downsample_ratio, width // self.downsample_ratio
        if active is None:
            active = self.mask(batch, h, w, images.device)
        elif tuple(active.shape) != (batch, 1, h, w):
            raise ValueError(f"active must have shape {(batch, 1, h, w)} for images of {height}x{width}, got {tuple(active.shape)}")
        active = active.bool()
        context = self.encoder.context
        with context.use(active):
            dense = self.densify(self.encode(images, active))
        prediction = self.decode(dense)
        target, mean, std = self.patch_targets(images)
        loss = self.loss(patchify(widened(prediction), self.downsample_ratio), target, active)
        return SparKOutput(loss=loss, active=active, prediction=prediction, images=images.detach(),
                           patch_mean=mean, patch_std=std, patch_size=self.downsample_ratio)


def build_spark(encoder: Union[str, nn.Module], input_size: Union[int, Sequence[int]] = 224, mask_ratio: float = 0.6,
                decoder_width: int = 768, densify_norm: str = "auto", sync_bn: bool = False,
                encoder_kwargs: Optional[Dict[str, Any]] = None) -> SparK:
    """Build SparK around a timm CNN given by name (created without classifier) or as a module.

    >>> spark = build_spark("resnet50", input_size=224, encoder_kwargs={"drop_path_rate": 0.05})
    >>> out = spark(images)          # out.loss, out.active, out.reconstruction
    """
    sparse_encoder = encoder if isinstance(encoder, SparseEncoder) else make_sparse_encoder(
        encoder, sync_bn=sync_bn, model_kwargs=encoder_kwargs)
    return SparK(sparse_encoder, input_size=input_size, mask_ratio=mask_ratio, decoder_width=decoder_width,
                 densify_norm=densify_norm, sync_bn=sync_bn)


def _replace_batchnorms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, CrossProcessBatchNorm2d.from_dense(child))
        else:
            _replace_batchnorms(child)


def convert_sync_batchnorm(spark: SparK) -> SparK:
    """Reduce BatchNorm statistics across processes: sparse BNs (encoder and densify) and the decoder's BNs.

    The decoder's BNs become :class:`CrossProcessBatchNorm2d` on every device (NCCL or gloo), not torch's
    SyncBatchNorm, whose forward synchronises host and device in every layer (and which DDP refuses on CPU)."""
    for module in spark.modules():
        if isinstance(module, SparseBatchNorm2d):
            module.sync = True
    _replace_batchnorms(spark.decoder)
    return spark
