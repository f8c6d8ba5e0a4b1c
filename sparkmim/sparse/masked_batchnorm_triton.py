"""The masked training-mode BatchNorm as fused Triton kernels: each pass reads the activation once.

Why: :class:`~sparkmim.sparse.masked_batchnorm.MaskedBatchNormFunction` is built from PyTorch ops.
Under bf16 autocast it widens and masks the activation into a float32 copy, centres it, and makes about
seven full passes forward and six backward, where cuDNN's BatchNorm makes two and three. On an
H200 that traffic is the estimated cause of most of SparK's ResNet-50 gap to the dense network.
These kernels make the same passes as a native BatchNorm: forward one statistics read and one
normalising read-and-write, backward one reduction read (gradient and input) and one read-and-write.
They read the input in its own dtype and memory layout (contiguous or channels_last), accumulate
in float32 (float64 for float64 inputs) and keep only the input itself for backward, not a float32
centred copy.

Statistics: every tile of (positions x channels) computes its visible count, sum and sum of squared
deviations from its own mean in one read; the tiles are merged with Chan's pairwise formula, which
keeps the two-pass accuracy (no E[x^2] - E[x]^2 cancellation). Cross-process statistics reduce the
sums and counts, then the deviations about the global mean, as the PyTorch path does.

Under ``torch.compile`` each launch is a registered operator (``sparkmim::masked_batchnorm_*``) with a
shape-only fake implementation: the compiler keeps the kernels as opaque calls. Eager code calls the
launches directly.

Runs on CUDA devices; with ``TRITON_INTERPRET=1`` set before this module is imported, Triton's
interpreter runs the same kernels on CPU tensors (how the tests check them on machines without a GPU).
"""
import contextlib
from typing import Any, Callable, Optional, Tuple

import torch
import triton
import triton.language as tl

from .masked_batchnorm import input_gradient_coefficients, reduce_across

_BLOCK = 64  # positions and channels per tile


@triton.jit
def _tile_indices(positions, channels, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile: (image, its positions, its channels, which of them exist)."""
    tiles_per_image = (positions + BLOCK_L - 1) // BLOCK_L
    image = tl.program_id(0) // tiles_per_image
    position = (tl.program_id(0) % tiles_per_image) * BLOCK_L + tl.arange(0, BLOCK_L)
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    inside = (position < positions)[:, None] & (channel < channels)[None, :]
    return image, position, channel, inside


@triton.jit
def _widen(value, WIDE: tl.constexpr):
    """``value`` in the accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    if WIDE:  # a constexpr: the compiler keeps one branch (returning from both would be a type conflict)
        widened = value.to(tl.float64)
    else:
        widened = value.to(tl.float32)
    return widened


@triton.jit
def _offsets(batch_stride, channel_stride, position_stride, image, position, channel):
    """Element offsets of the tile, in 64 bits: a large activation has more than 2**31 elements."""
    return (image.to(tl.int64) * batch_stride + position[:, None].to(tl.int64) * position_stride
            + channel[None, :].to(tl.int64) * channel_stride)


@triton.jit
def _load_tile(ptr, batch_stride, channel_stride, position_stride, image, position, channel, inside,
               WIDE: tl.constexpr):
    offsets = _offsets(batch_stride, channel_stride, position_stride, image, position, channel)
    return _widen(tl.load(ptr + offsets, mask=inside, other=0.0), WIDE)


@triton.jit
def _store_tile(ptr, value, batch_stride, channel_stride, position_stride, image, position, channel, inside):
    offsets = _offsets(batch_stride, channel_stride, position_stride, image, position, channel)
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=inside)


@triton.jit
def _load_visible(mask_ptr, image, position, positions, WIDE: tl.constexpr):
    """The tile's visible mask, (positions, 1): the mask is (B, H*W), one value for every channel."""
    visible = tl.load(mask_ptr + image * positions + position, mask=position < positions, other=0.0)
    return _widen(visible, WIDE)[:, None]


@triton.jit
def _load_channels(ptr, channel, channels):
    """A per-channel vector's values for the tile's channels, as a (1, channels) row."""
    return tl.load(ptr + channel, mask=channel < channels, other=0.0)[None, :]


@triton.jit
def _gradient_and_centered(grad_ptr, grad_batch_stride, grad_channel_stride, grad_position_stride,
                           x_ptr, batch_stride, channel_stride, position_stride, mean_ptr,
                           image, position, channel, inside, channels, WIDE: tl.constexpr):
    """The tile's upstream gradient and its input minus the channel mean: what both backward kernels read."""
    x = _load_tile(x_ptr, batch_stride, channel_stride, position_stride, image, position, channel, inside, WIDE)
    grad = _load_tile(grad_ptr, grad_batch_stride, grad_channel_stride, grad_position_stride,
                      image, position, channel, inside, WIDE)
    return grad, x - _load_channels(mean_ptr, channel, channels)


@triton.jit
def _statistics_kernel(x_ptr, mask_ptr, sum_ptr, deviation_ptr, count_ptr,
                       batch_stride, channel_stride, position_stride, positions, channels,
                       BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr):
    """Per tile: visible count, per-channel visible sum and sum of squared deviations from the tile mean."""
    image, position, channel, inside = _tile_indices(positions, channels, BLOCK_L, BLOCK_C)
    x = _load_tile(x_ptr, batch_stride, channel_stride, position_stride, image, position, channel, inside, WIDE)
    visible = _load_visible(mask_ptr, image, position, positions, WIDE)
    count = tl.sum(visible, axis=0)  # (1,)
    total = tl.sum(x * visible, axis=0)
    deviation = (x - (total / tl.maximum(count, 1.0))[None, :]) * visible
    row = tl.program_id(0)
    tl.store(sum_ptr + row * channels + channel, total, mask=channel < channels)
    tl.store(deviation_ptr + row * channels + channel, tl.sum(deviation * deviation, axis=0), mask=channel < channels)
    first = tl.arange(0, 1)
    tl.store(count_ptr + row + first, count, mask=first < 1 - tl.program_id(1))  # channel block 0 writes it


@triton.jit
def _normalize_kernel(x_ptr, mask_ptr, out_ptr, mean_ptr, scale_ptr, shift_ptr,
                      batch_stride, channel_stride, position_stride,
                      out_batch_stride, out_channel_stride, out_position_stride, positions, channels,
                      BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr):
    """out = ((x - mean) * scale + shift) * visible, written in the output's dtype."""
    image, position, channel, inside = _tile_indices(positions, channels, BLOCK_L, BLOCK_C)
    x = _load_tile(x_ptr, batch_stride, channel_stride, position_stride, image, position, channel, inside, WIDE)
    visible = _load_visible(mask_ptr, image, position, positions, WIDE)
    mean = _load_channels(mean_ptr, channel, channels)
    out = ((x - mean) * _load_channels(scale_ptr, channel, channels) + _load_channels(shift_ptr, channel, channels))
    _store_tile(out_ptr, out * visible, out_batch_stride, out_channel_stride, out_position_stride,
                image, position, channel, inside)


@triton.jit
def _gradient_sums_kernel(grad_ptr, x_ptr, mask_ptr, mean_ptr, sum_grad_ptr, sum_grad_centered_ptr,
                          grad_batch_stride, grad_channel_stride, grad_position_stride,
                          batch_stride, channel_stride, position_stride, positions, channels,
                          BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr):
    """Per tile and channel: sum of the visible gradient and of the visible gradient times (x - mean)."""
    image, position, channel, inside = _tile_indices(positions, channels, BLOCK_L, BLOCK_C)
    grad, centered = _gradient_and_centered(grad_ptr, grad_batch_stride, grad_channel_stride, grad_position_stride,
                                            x_ptr, batch_stride, channel_stride, position_stride, mean_ptr,
                                            image, position, channel, inside, channels, WIDE)
    grad = grad * _load_visible(mask_ptr, image, position, positions, WIDE)
    row = tl.program_id(0)
    tl.store(sum_grad_ptr + row * channels + channel, tl.sum(grad, axis=0), mask=channel < channels)
    tl.store(sum_grad_centered_ptr + row * channels + channel, tl.sum(grad * centered, axis=0), mask=channel < channels)


@triton.jit
def _input_gradient_kernel(grad_ptr, x_ptr, mask_ptr, out_ptr, mean_ptr, scale_ptr, grad_mean_ptr, centered_factor_ptr,
                           grad_batch_stride, grad_channel_stride, grad_position_stride,
                           batch_stride, channel_stride, position_stride,
                           out_batch_stride, out_channel_stride, out_position_stride, positions, channels,
                           BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr):
    """grad_x = visible * scale * (grad - grad_mean - (x - mean) * centered_factor)."""
    image, position, channel, inside = _tile_indices(positions, channels, BLOCK_L, BLOCK_C)
    grad, centered = _gradient_and_centered(grad_ptr, grad_batch_stride, grad_channel_stride, grad_position_stride,
                                            x_ptr, batch_stride, channel_stride, position_stride, mean_ptr,
                                            image, position, channel, inside, channels, WIDE)
    out = _load_channels(scale_ptr, channel, channels) * (
        grad - _load_channels(grad_mean_ptr, channel, channels)
        - centered * _load_channels(centered_factor_ptr, channel, channels))
    _store_tile(out_ptr, out * _load_visible(mask_ptr, image, position, positions, WIDE),
                out_batch_stride, out_channel_stride, out_position_stride, image, position, channel, inside)


def _flat_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) with its H and W flattenable into one position axis: contiguous and
    channels_last tensors as they are, others copied."""
    if x.stride(2) != x.shape[3] * x.stride(3) and x.shape[2] > 1:
        x = x.contiguous()
    return x


def _strides(x: torch.Tensor) -> Tuple[int, int, int]:
    """(batch, channel, position) strides of a tensor :func:`_flat_strides` accepts as it is."""
    return x.stride(0), x.stride(1), x.stride(3)


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _grid(x: torch.Tensor) -> Tuple[Tuple[int, int], int, int]:
    """(grid, BLOCK_L, BLOCK_C) over ``x``'s tiles: one program per (image, position block, channel block)."""
    batch, channels, height, width = x.shape
    block_l = min(_BLOCK, triton.next_power_of_2(height * width))
    block_c = min(_BLOCK, triton.next_power_of_2(channels))
    return (batch * triton.cdiv(height * width, block_l), triton.cdiv(channels, block_c)), block_l, block_c


def _rows(x: torch.Tensor) -> int:
    """Position rows of the grid (images x position blocks): the first dimension of per-tile sums."""
    return _grid(x)[0][0]


def _launch(kernel: Any, x: torch.Tensor, *args: Any) -> None:
    """Run ``kernel`` over ``x``'s tiles with ``args``, then the positions, channels and compile-time constants.

    On ``x``'s own GPU: Triton launches on the current CUDA device and its stream, not on the device of the
    tensors it is given (PyTorch's ops switch per call), so a model on cuda:1 while GPU 0 is current would
    have its kernels run on GPU 0, unordered with GPU 1's stream."""
    grid, block_l, block_c = _grid(x)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[grid](*args, x.shape[2] * x.shape[3], x.shape[1], BLOCK_L=block_l, BLOCK_C=block_c,
                     WIDE=_accumulation_dtype(x) == torch.float64)


def _tile_statistics_outputs(x: torch.Tensor, *unused: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty (sums, deviations, counts) for :func:`_tile_statistics`; also its shapes for torch.compile."""
    acc, rows, channels = _accumulation_dtype(x), _rows(x), x.shape[1]
    return x.new_empty(rows, channels, dtype=acc), x.new_empty(rows, channels, dtype=acc), x.new_empty(rows, dtype=acc)


def _gradient_sums_outputs(grad: torch.Tensor, x: torch.Tensor, visible: torch.Tensor,
                           mean: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Empty per-tile (sum_grad, sum_grad_centered) for :func:`_gradient_sums`; also its shapes for torch.compile."""
    rows, channels = _rows(x), x.shape[1]
    return x.new_empty(rows, channels, dtype=mean.dtype), x.new_empty(rows, channels, dtype=mean.dtype)


def _like_input(x: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
    """An empty tensor of ``x``'s shape, dtype and memory layout: the elementwise kernels' output."""
    return torch.empty_like(x)


def _like_gradient_input(grad: torch.Tensor, x: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
    """The input gradient's empty output (shaped like the layer's input ``x``, the launch's second argument)."""
    return _like_input(x)


def _tile_statistics(x: torch.Tensor, visible: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per tile row: (visible sum per channel, squared deviations from the tile mean per channel, visible count)."""
    sums, deviations, counts = _tile_statistics_outputs(x)
    _launch(_statistics_kernel, x, x, visible, sums, deviations, counts, *_strides(x))
    return sums, deviations, counts


def _normalized(x: torch.Tensor, visible: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                shift: torch.Tensor) -> torch.Tensor:
    """((x - mean) * scale + shift) * visible, in ``x``'s dtype and memory layout."""
    out = _like_input(x)
    _launch(_normalize_kernel, x, x, visible, out, mean, scale, shift, *_strides(x), *_strides(out))
    return out


def _gradient_sums(grad: torch.Tensor, x: torch.Tensor, visible: torch.Tensor,
                   mean: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per tile row and channel: sums of the visible gradient and of the visible gradient times (x - mean)."""
    sum_grad, sum_grad_centered = _gradient_sums_outputs(grad, x, visible, mean)
    _launch(_gradient_sums_kernel, x, grad, x, visible, mean, sum_grad, sum_grad_centered,
            *_strides(grad), *_strides(x))
    return sum_grad, sum_grad_centered


def _input_gradient(grad: torch.Tensor, x: torch.Tensor, visible: torch.Tensor, mean: torch.Tensor,
                    scale: torch.Tensor, grad_mean: torch.Tensor, centered_factor: torch.Tensor) -> torch.Tensor:
    """visible * scale * (grad - grad_mean - (x - mean) * centered_factor), in ``x``'s dtype and layout."""
    grad_x = _like_gradient_input(grad, x)
    _launch(_input_gradient_kernel, x, grad, x, visible, grad_x, mean, scale, grad_mean, centered_factor,
            *_strides(grad), *_strides(x), *_strides(grad_x))
    return grad_x


def _operator(launch: Callable[..., Any], outputs: Callable[..., Any]) -> Any:
    """``launch`` registered as a PyTorch operator ``sparkmim::masked_batchnorm<name>``; ``outputs`` (the
    empty outputs it allocates) is its fake implementation: torch.compile keeps the kernels as opaque calls
    and plans memory from it instead of tracing Triton's launcher."""
    operator = torch.library.custom_op(f"sparkmim::masked_batchnorm{launch.__name__}", launch, mutates_args=())
    operator.register_fake(outputs)
    return operator


_OPERATORS = {  # never changed after import
    _tile_statistics: _operator(_tile_statistics, _tile_statistics_outputs),
    _normalized: _operator(_normalized, _like_input),
    _gradient_sums: _operator(_gradient_sums, _gradient_sums_outputs),
    _input_gradient: _operator(_input_gradient, _like_gradient_input),
}


def _run(launch: Callable[..., Any], *args: torch.Tensor) -> Any:
    """``launch(*args)``: called directly when eager (the dispatcher would add microseconds to each of a
    step's hundreds of launches), through its registered operator while torch.compile traces."""
    return _OPERATORS[launch](*args) if torch.compiler.is_compiling() else launch(*args)


def masked_statistics(x: torch.Tensor, visible: torch.Tensor,
                      process_group: Optional[Any] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, biased variance, count) per channel over the visible positions of ``x`` (B, C, H, W);
    ``visible`` is (B, H*W), contiguous. Accumulated in float32 (float64 for float64 inputs)."""
    x = _flat_strides(x)
    sums, deviations, counts = _run(_tile_statistics, x, visible)
    count = counts.sum().reshape(1)
    total = reduce_across(torch.cat([sums.sum(dim=0), count]), process_group)
    count = total[-1]
    mean = total[:-1] / count
    tile_means = sums / counts.clamp(min=1)[:, None]
    # Chan's merge: the squared deviations about the (global) mean
    squares = deviations.sum(dim=0) + (counts[:, None] * (tile_means - mean).square()).sum(dim=0)
    var = reduce_across(squares, process_group) / count
    return mean, var, count


class FusedMaskedBatchNormFunction(torch.autograd.Function):
    """The same computation and return values as ``MaskedBatchNormFunction`` (y, mean, biased var, count),
    on the input in its own dtype: y has ``x``'s dtype and memory layout; statistics are float32 (float64)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, weight: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], eps: float, process_group: Optional[Any]) -> Tuple[torch.Tensor, ...]:
        x = _flat_strides(x)
        visible = mask.reshape(x.shape[0], x.shape[2] * x.shape[3]).contiguous()
        mean, var, count = masked_statistics(x, visible, process_group)
        acc = mean.dtype
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(acc)
        shift = torch.zeros_like(mean) if bias is None else bias.to(acc)
        out = _run(_normalized, x, visible, mean, scale, shift)
        ctx.save_for_backward(x, visible, weight, mean, invstd, count)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.process_group = process_group
        ctx.mark_non_differentiable(mean, var, count)
        return out, mean, var, count

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, *unused: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, visible, weight, mean, invstd, count = ctx.saved_tensors
        grad_out = _flat_strides(grad_out)
        sum_grad, sum_grad_centered = _run(_gradient_sums, grad_out, x, visible, mean)
        sum_grad, sum_grad_normalized = sum_grad.sum(dim=0), sum_grad_centered.sum(dim=0) * invstd
        grad_weight = sum_grad_normalized.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_bias = sum_grad.to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[3] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            scale, grad_mean, centered_factor = input_gradient_coefficients(
                sum_grad, sum_grad_normalized, invstd, weight, count, ctx.process_group)
            grad_x = _run(_input_gradient, grad_out, x, visible, mean, scale, grad_mean, centered_factor)
        return grad_x, None, grad_weight, grad_bias, None, None
