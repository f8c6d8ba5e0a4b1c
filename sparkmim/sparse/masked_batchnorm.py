"""Training-mode BatchNorm over visible positions as one autograd Function with the analytic backward.

Why not plain autograd: differentiating the elementwise formula leaves per-channel reductions in
the input precision and a term through the mean that is analytically zero, and on ill-conditioned
channels float32 gradients drift by about 1e-2 relative. Like ATen's batch norm, this Function uses
the closed-form backward and accumulates the per-channel sums over the batch in the device's
accumulation type (float64 on CPU, float32 on CUDA).

Speed: masked sums are contractions (``einsum``: no temporary the size of the input), the centred,
masked input is computed once, used for the variance and the output and kept for backward, and
follow-up elementwise steps run in place (a fresh full-size tensor costs more than the arithmetic).
Cross-process statistics (SyncBatchNorm semantics) reduce sums and counts, forward and backward.
"""
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """ATen's accumulation type for a float tensor on this device (CPU: float64, GPU: float32)."""
    return torch.float64 if x.device.type == "cpu" else torch.float32


def masked_channel_sum(x: torch.Tensor, mask: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """sum over (B, H, W) of x * mask, per channel: per-image contractions with the mask (no temporary
    the size of x), then the (B, C) partials summed in ``acc``."""
    return torch.einsum("bchw,bhw->bc", x, mask[:, 0]).to(acc).sum(dim=0)


def channel_dot(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """sum over (B, H, W) of a * b, per channel, without materialising a * b."""
    return torch.einsum("bchw,bchw->bc", a, b).to(acc).sum(dim=0)


def _reduce(value: torch.Tensor, process_group: Optional[Any]) -> torch.Tensor:
    if process_group is not None:
        dist.all_reduce(value, group=process_group)
    return value


def _per_channel(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return value.to(dtype)[None, :, None, None]


class MaskedBatchNormFunction(torch.autograd.Function):
    """y = ((x - mean) / sqrt(var + eps) * weight + bias) * mask, statistics over mask == 1 positions.

    Returns (y, mean, biased var, count); only y is differentiable."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], eps: float, process_group: Optional[Any]) -> Tuple[torch.Tensor, ...]:
        acc = accumulation_dtype(x)
        count = mask.sum(dtype=acc).reshape(1)
        sums = _reduce(torch.cat([masked_channel_sum(x, mask, acc), count]), process_group)
        count = sums[-1]
        mean = sums[:-1] / count
        centered = (x - _per_channel(mean, x.dtype)).mul_(mask)  # zero where masked
        var = _reduce(channel_dot(centered, centered, acc), process_group) / count
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(acc)
        if bias is None:
            out = centered * _per_channel(scale, x.dtype)
        else:
            out = torch.addcmul(_per_channel(bias, x.dtype), centered, _per_channel(scale, x.dtype)).mul_(mask)
        ctx.save_for_backward(centered, mask, weight, invstd, count)
        ctx.has_bias = bias is not None
        ctx.process_group = process_group
        ctx.mark_non_differentiable(mean, var, count)
        return out, mean.to(x.dtype), var.to(x.dtype), count.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, *unused: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        centered, mask, weight, invstd, count = ctx.saved_tensors
        acc = accumulation_dtype(grad_out)
        dtype = grad_out.dtype
        # sums over visible positions: centered is zero where masked, so only sum(g) needs the mask
        sum_grad = masked_channel_sum(grad_out, mask, acc)
        sum_grad_normalized = channel_dot(grad_out, centered, acc) * invstd
        grad_weight = sum_grad_normalized.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_bias = sum_grad.to(dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            if ctx.process_group is not None:
                both = _reduce(torch.cat([sum_grad, sum_grad_normalized]), ctx.process_group)
                sum_grad, sum_grad_normalized = both.chunk(2)
            scale = invstd if weight is None else invstd * weight.to(acc)
            # grad_x = mask * scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = centered * invstd
            #        = mask * (scale * g - scale * mean(g)) + centered * (-scale * invstd * mean(g * xhat))
            # (centered is already zero where masked): three passes over the tensor
            grad_x = torch.addcmul(_per_channel(-scale * sum_grad / count, dtype), grad_out, _per_channel(scale, dtype))
            grad_x.mul_(mask)
            grad_x.addcmul_(centered, _per_channel(-scale * invstd * sum_grad_normalized / count, dtype))
        return grad_x, None, grad_weight, grad_bias, None, None
