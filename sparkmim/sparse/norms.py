"""Normalisation layers whose statistics use visible positions only.

Statistics are masked sums and counts (no ``nonzero`` or boolean indexing), so shapes stay static,
nothing synchronises host and device, and ``torch.compile(fullgraph=True)`` can trace them. They are
computed in float32 under autocast. Parameter and buffer names equal those of the dense layers they
replace, so the encoder's state dict is still the timm model's.

The BatchNorms' training-mode computation has two kernels (:data:`NORM_KERNELS`): ``"torch"``, built
from PyTorch ops, any device; ``"triton"``, fused Triton kernels for CUDA devices that read the
activation once per pass in its own dtype (:mod:`.masked_batchnorm_triton`). :func:`select_norm_kernel`
chooses one for a whole model.
"""
import importlib.util
import os
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..utils.precision import reduction_dtype
from .context import MaskContext
from .masked_batchnorm import MaskedBatchNormFunction


def _centered_for_variance(x: torch.Tensor, mean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(x - mean) * mask`` with the mean detached, for the variance only.

    The variance's derivative through the mean is ``-2/n * sum(x - mean)``, which is exactly zero;
    autograd would compute it as rounding noise. Detaching drops the term and keeps the exact gradient."""
    return (x - mean.detach()) * mask


def _should_sync(sync: bool) -> bool:
    return sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


NORM_KERNELS = ("torch", "triton")


def _check_known(kernel: str) -> None:
    if kernel not in NORM_KERNELS:
        raise ValueError(f"unknown norm kernel {kernel!r}; choose one of {', '.join(NORM_KERNELS)}")


def check_norm_kernel(kernel: str, device: torch.device) -> None:
    """Raise a one-line ValueError when ``kernel`` cannot train on ``device`` (before a run starts)."""
    _check_known(kernel)
    if kernel != "triton":
        return
    # Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors: how tests check them
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"the triton norm kernel runs on CUDA devices, not on {device.type}; "
                         "use the torch kernel there (--norm-kernel torch)")
    if importlib.util.find_spec("triton") is None:
        raise ValueError("the triton norm kernel needs the triton package (torch's CUDA wheels bring it); "
                         "install it or use --norm-kernel torch")


def _fused_function(x: torch.Tensor) -> Any:
    """The Triton kernels' autograd Function (imported on first use: triton is optional).

    Checked on eager calls only: torch.compile will not trace the check's package lookup (a graph break
    at every BatchNorm on torch 2.11), and the trainers check the kernel before they compile."""
    if not torch.compiler.is_compiling():
        try:
            check_norm_kernel("triton", x.device)
        except ValueError as error:
            raise RuntimeError(str(error)) from None
    from .masked_batchnorm_triton import FusedMaskedBatchNormFunction
    return FusedMaskedBatchNormFunction


def select_norm_kernel(model: nn.Module, kernel: str) -> int:
    """Make every sparse or cross-process BatchNorm in ``model`` train with ``kernel`` (one of
    :data:`NORM_KERNELS`); returns how many layers it set. Evaluation mode is the same for both."""
    _check_known(kernel)
    layers = [module for module in model.modules() if isinstance(module, SparseBatchNorm2d)]
    for layer in layers:
        layer.norm_kernel = kernel
    return len(layers)


class SparseBatchNorm2d(nn.Module):
    """BatchNorm2d over the visible positions of a (B, C, H, W) feature map.

    Training mode normalises with the mean and biased variance of the visible positions and updates
    the running statistics exactly as ``BatchNorm1d`` over the gathered visible positions would
    (unbiased variance for the running estimate). With ``sync=True`` and a process group of more than
    one rank, sums and counts are reduced across processes, as ``SyncBatchNorm`` does.
    Masked positions of the output are exactly zero. ``norm_kernel`` picks the training-mode kernel
    (see the module docstring and :func:`select_norm_kernel`).
    """

    norm_kernel: str = "torch"

    def __init__(self, num_features: int, context: MaskContext, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, sync: bool = False,
                 process_group: Optional[object] = None) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.sync, self.process_group = sync, process_group
        self.context = context
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    @classmethod
    def from_dense(cls, dense: nn.modules.batchnorm._BatchNorm, context: MaskContext, sync: bool = False) -> "SparseBatchNorm2d":
        """Take over a dense BatchNorm's parameters and buffers (the same tensors, not copies)."""
        sparse = cls.__new__(cls)
        nn.Module.__init__(sparse)
        sparse.num_features, sparse.eps, sparse.momentum = dense.num_features, dense.eps, dense.momentum
        sparse.affine, sparse.track_running_stats = dense.affine, dense.track_running_stats
        sparse.sync = sync or isinstance(dense, nn.SyncBatchNorm)
        sparse.process_group = getattr(dense, "process_group", None)
        sparse.context = context
        sparse.register_parameter("weight", dense.weight)
        sparse.register_parameter("bias", dense.bias)
        sparse.register_buffer("running_mean", dense.running_mean)
        sparse.register_buffer("running_var", dense.running_var)
        sparse.register_buffer("num_batches_tracked", dense.num_batches_tracked)
        sparse.train(dense.training)
        return sparse

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, sync={self.sync}")

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative moving average, as in torch's BatchNorm. A momentum stays a Python float:
        # torch.tensor(momentum, device=...) would be a blocking host-to-device copy on a GPU, in every layer
        factor = 1.0 / self.num_batches_tracked.to(mean.dtype) if self.momentum is None else float(self.momentum)
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))

    def _mask(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The visible mask at ``x``'s resolution; all ones for pooled (1x1) vectors, which have no positions
        (ResNeSt's split attention normalises its pooled gate with a BatchNorm2d)."""
        if self.context.layout_of(x) == "pooled":
            return torch.ones(x.shape[0], 1, 1, 1, dtype=dtype, device=x.device)
        return self.context.mask_like(x, dtype=dtype)

    def _batch_statistics_normalize(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(output, mean, biased var, count) with this batch's visible statistics. The torch kernel
        computes in the mask's (reduction) dtype, widening ``x`` in its first product with the mask; the
        triton kernel reads ``x`` as it is."""
        group = (self.process_group or dist.group.WORLD) if _should_sync(self.sync) else None
        if self.norm_kernel == "triton":
            return _fused_function(x).apply(x, mask, self.weight, self.bias, self.eps, group)
        return MaskedBatchNormFunction.apply(x, mask, self.weight, self.bias, self.eps, group)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        dtype = reduction_dtype(x)
        mask = self._mask(x, dtype)
        if self.training or not self.track_running_stats:
            out, mean, var, count = self._batch_statistics_normalize(x, mask)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, count)
            return out.to(x.dtype)
        x32 = x.to(dtype)
        # eval: fixed statistics, so plain autograd is exact
        scale = torch.rsqrt(self.running_var.to(dtype) + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(dtype)
        out = (x32 - self.running_mean.to(dtype)[None, :, None, None]) * scale[None, :, None, None]
        if self.bias is not None:
            out = out + self.bias.to(dtype)[None, :, None, None]
        return (out * mask).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(x)


class CrossProcessBatchNorm2d(SparseBatchNorm2d):
    """A dense BatchNorm2d whose statistics are reduced across processes on any backend (NCCL, gloo).

    SparK's dense decoder uses it under several processes, on GPUs too: torch's SyncBatchNorm runs on
    GPUs only, and its forward drops the statistics of empty inputs by boolean indexing, a host-device
    synchronisation in every layer. This is the sparse BatchNorm's sync-free computation with every
    position visible, so CPU (gloo) and GPU (NCCL) runs share one code path."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Optional[object] = None) -> None:
        super().__init__(num_features, context=None, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, sync=True, process_group=process_group)

    @classmethod
    def from_dense(cls, dense: nn.modules.batchnorm._BatchNorm, context: Optional[MaskContext] = None,
                   sync: bool = True) -> "CrossProcessBatchNorm2d":
        return super().from_dense(dense, context, sync=True)

    def _mask(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.ones(x.shape[0], 1, x.shape[2], x.shape[3], dtype=dtype, device=x.device)


class SparseBatchNormAct2d(SparseBatchNorm2d):
    """timm's BatchNormAct2d made sparse: visible-only statistics, then its drop and activation,
    then re-masking (an activation need not map 0 to 0)."""

    @classmethod
    def from_dense(cls, dense: nn.Module, context: MaskContext, sync: bool = False) -> "SparseBatchNormAct2d":
        sparse = super().from_dense(dense, context, sync)
        sparse.drop = dense.drop
        sparse.act = dense.act
        return sparse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.drop(self._normalize(x)))
        return out * self._mask(out, out.dtype)


class SparseGroupNorm(nn.Module):
    """GroupNorm whose per-sample, per-group statistics use visible positions only."""

    def __init__(self, dense: nn.GroupNorm, context: MaskContext) -> None:
        super().__init__()
        self.num_groups, self.num_channels, self.eps, self.affine = dense.num_groups, dense.num_channels, dense.eps, dense.affine
        self.register_parameter("weight", dense.weight)
        self.register_parameter("bias", dense.bias)
        self.context = context

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        groups = self.num_groups
        dtype = reduction_dtype(x)
        mask = self.context.mask_like(x, dtype=dtype)  # (B, 1, H, W)
        x32 = x.to(dtype).reshape(batch, groups, channels // groups, height, width)
        mask5 = mask.unsqueeze(1)  # (B, 1, 1, H, W)
        count = mask5.sum(dim=(2, 3, 4), keepdim=True) * (channels // groups)
        mean = (x32 * mask5).sum(dim=(2, 3, 4), keepdim=True) / count
        centered = (x32 - mean) * mask5
        var = _centered_for_variance(x32, mean, mask5).square().sum(dim=(2, 3, 4), keepdim=True) / count
        out = (centered * torch.rsqrt(var + self.eps)).reshape(batch, channels, height, width)
        if self.weight is not None:
            out = out * self.weight.to(dtype)[None, :, None, None]
        if self.bias is not None:  # metaformer v2's GroupNorm1NoBias has a weight but no bias
            out = out + self.bias.to(dtype)[None, :, None, None] * mask
        return out.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(x)


class SparseGroupNormAct(SparseGroupNorm):
    """timm's GroupNormAct made sparse (visible-only statistics, then drop, activation, re-mask)."""

    def __init__(self, dense: nn.Module, context: MaskContext) -> None:
        super().__init__(dense, context)
        self.drop = dense.drop
        self.act = dense.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.drop(self._normalize(x)))
        return out * self.context.mask_like(out)


class SparseLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map at visible positions; masked outputs are zero.

    Used for SparK's densify norm of ConvNeXt-style encoders (its statistics are per position, so only
    the output needs re-masking)."""

    def __init__(self, num_channels: int, context: MaskContext, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        # back in the input's memory layout: the permuted result is channels-last, which would otherwise
        # carry over into the decoder and change its float32 reductions (the reference's decoder is NCHW)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        out = out.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        return out * self.context.mask_like(out)
