"""Training-mode BatchNorm over visible positions as one autograd Function with the analytic backward.

Why not plain autograd: differentiating the elementwise formula leaves per-channel reductions in
the input precision and a term through the mean that is analytically zero, and on ill-conditioned
channels float32 gradients drift by about 1e-2 relative. Like ATen's batch norm, this Function uses
the closed-form backward and accumulates the per-channel sums over the batch in the device's
accumulation type (float64 on CPU, float32 on CUDA, float64 for float64 inputs anywhere).

Speed: the input is masked once and centred in place on that copy, which is used for the variance
and the output and kept for backward; sums are plain reductions (``sum``, ``vector_norm``, and in
backward ATen's fused batch-norm reduction), never batched matrix products; follow-up elementwise
steps run in place (a fresh full-size tensor costs more than the arithmetic).
Cross-process statistics (SyncBatchNorm semantics) reduce sums and counts, forward and backward.
"""
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """ATen's accumulation type for a float tensor on this device: float64 on CPU; on a GPU float32,
    except float64 for float64 tensors (a float64 run must not lose precision in its statistics)."""
    return torch.float64 if x.device.type == "cpu" or x.dtype == torch.float64 else torch.float32


def per_image_channel_sum(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """sum over (B, H, W) per channel: the per-(image, channel) sums are plain reductions in the input
    precision (pairwise summation), then the (B, C) partials are added in ``acc``."""
    return x.sum(dim=(2, 3)).to(acc).sum(dim=0)


def per_image_channel_sum_of_squares(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """sum over (B, H, W) of x**2 per channel, through ``vector_norm`` (one read, no x**2 temporary)."""
    return torch.linalg.vector_norm(x, dim=(2, 3)).to(acc).square().sum(dim=0)


def channel_sums_for_backward(grad: torch.Tensor, centered: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of grad, sum of grad * centered) per channel over (B, H, W), in one fused pass.

    ATen's batch-norm backward computes exactly these two reductions (as grad_bias and, with mean 0
    and invstd 1, grad_weight), reading both tensors once and accumulating in the device's
    accumulation type; an einsum would run them as batched matrix products, several times slower."""
    channels = grad.shape[1]
    zeros = torch.zeros(channels, dtype=grad.dtype, device=grad.device)
    ones = torch.ones(channels, dtype=grad.dtype, device=grad.device)
    _, sum_grad_centered, sum_grad = torch.ops.aten.native_batch_norm_backward(
        grad, centered, ones, None, None, zeros, ones, True, 0.0, [False, True, True])
    return sum_grad, sum_grad_centered


def reduce_across(value: torch.Tensor, process_group: Optional[Any]) -> torch.Tensor:
    """``value`` summed over the processes of ``process_group`` (in place); unchanged without one."""
    if process_group is not None:
        dist.all_reduce(value, group=process_group)
    return value


def input_gradient_coefficients(sum_grad: torch.Tensor, sum_grad_normalized: torch.Tensor, invstd: torch.Tensor,
                                weight: Optional[torch.Tensor], count: torch.Tensor,
                                process_group: Optional[Any]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel (scale, grad_mean, centered_factor) of the input's gradient,
    ``grad_x = mask * scale * (grad - grad_mean - (x - mean) * centered_factor)``, from this process's
    sums of the visible gradient and of the gradient times the normalised input (reduced here across
    ``process_group``, as SyncBatchNorm's backward does)."""
    if process_group is not None:
        sum_grad, sum_grad_normalized = reduce_across(torch.cat([sum_grad, sum_grad_normalized]), process_group).chunk(2)
    scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
    return scale, sum_grad / count, invstd * sum_grad_normalized / count


def _per_channel(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return value.to(dtype)[None, :, None, None]


class MaskedBatchNormFunction(torch.autograd.Function):
    """y = ((x - mean) / sqrt(var + eps) * weight + bias) * mask, statistics over mask == 1 positions.

    Computed in the dtype of ``x * mask``: give a half-precision ``x`` with a float32 mask and every
    step runs in float32 (autograd casts the input's gradient back to ``x``'s dtype).
    Returns y in ``x``'s dtype (as the triton kernel's Function does) and (mean, biased var, count)
    in the computation's; only y is differentiable."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], eps: float, process_group: Optional[Any]) -> Tuple[torch.Tensor, ...]:
        masked = x * mask  # in the mask's dtype: a bf16 input is widened by this product, not by a copy first
        dtype = masked.dtype
        acc = accumulation_dtype(masked)
        count = mask.sum(dtype=acc).reshape(1)
        sums = reduce_across(torch.cat([per_image_channel_sum(masked, acc), count]), process_group)
        count = sums[-1]
        mean = sums[:-1] / count
        centered = masked.addcmul_(mask, _per_channel(-mean, dtype))  # x - mean where visible, 0 where masked
        var = reduce_across(per_image_channel_sum_of_squares(centered, acc), process_group) / count
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(acc)
        # y in x's dtype; the re-masking multiplies by exact ones and zeros, so it runs after the
        # narrowing cast (fewer bytes, the same bits)
        if bias is None:
            out = (centered * _per_channel(scale, dtype)).to(x.dtype)  # centered is zero where masked
        else:
            out = torch.addcmul(_per_channel(bias, dtype), centered, _per_channel(scale, dtype)).to(x.dtype).mul_(mask)
        ctx.save_for_backward(centered, mask, weight, invstd, count)
        ctx.has_bias = bias is not None
        ctx.process_group = process_group
        ctx.mark_non_differentiable(mean, var, count)
        return out, mean.to(dtype), var.to(dtype), count.to(dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, *unused: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        centered, mask, weight, invstd, count = ctx.saved_tensors
        acc = accumulation_dtype(grad_out)
        grad_masked = grad_out * mask  # a half-precision gradient is widened by this product
        dtype = grad_masked.dtype
        sum_grad, sum_grad_centered = (v.to(acc) for v in channel_sums_for_backward(grad_masked, centered))
        sum_grad_normalized = sum_grad_centered * invstd
        grad_weight = sum_grad_normalized.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_bias = sum_grad.to(dtype) if ctx.has_bias and ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            scale, grad_mean, centered_factor = input_gradient_coefficients(
                sum_grad, sum_grad_normalized, invstd, weight, count, ctx.process_group)
            # grad_x = mask * scale * (g - mean(g) - xhat * mean(g * xhat)), xhat = centered * invstd
            #        = scale * (g * mask) - scale * mean(g) * mask - scale * centered_factor * centered
            # (centered is zero where masked), in place on g * mask
            grad_x = grad_masked.mul_(_per_channel(scale, dtype))
            grad_x.addcmul_(mask, _per_channel(-scale * grad_mean, dtype))
            grad_x.addcmul_(centered, _per_channel(-scale * centered_factor, dtype))
        return grad_x, None, grad_weight, grad_bias, None, None
