"""Build-time check that the converted encoder really is submanifold-sparse.

Rules cover layer *types*; a block may still compute statistics inline in its own forward (say
``x.mean((2, 3))`` in an attention block sparkmim has no rule for). Such a block makes visible
features depend on how many masked positions exist. The probe encodes one image twice: on a canvas
with only the centre patch visible, and on the same canvas surrounded by a ring of fully masked
patches. Sparse semantics give identical outputs on the shared region at every layer (masked
positions are zero in both, like padding); the first layer whose outputs differ, or that leaves a
non-zero at a masked position, is named in the error.

The probe runs in float64 (weights are cast there and back, which is exact for float32, float16
and bfloat16), so that correct layers agree to ~1e-15 and any dependence stands out.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from ..utils.errors import describe_error
from .context import MaskContext
from .rules import UnsupportedLayerError

GRID = 3          # patches per side of the small canvas; only the centre one is visible
RING = 1          # masked patches added on each side for the large canvas
RELATIVE_TOLERANCE = 1e-9  # in float64; correct layers agree to ~1e-15, inline global pooling differs by >1e-6
# outputs whose values are all below this are compared to it rather than to their own (rounding) size: a
# layer whose output is zero by construction (metaformer's pool(x) - x at a lone visible patch) gives
# rounding noise of ~1e-17 on both canvases, which is not a difference
ABSOLUTE_FLOOR = 1e-6


@contextmanager
def _in_float64(model: nn.Module) -> Iterator[None]:
    """Temporarily cast floating parameters and buffers to float64, restoring each one's dtype.

    Parameters that are all zero (timm initialises the last norm of a residual block to zero) are given
    random values meanwhile: a zero scale would feed zeros to the layers after it and hide their
    statistics from the probe. Their zeros are put back afterwards."""
    originals = [(module, kind, name, tensor.dtype) for module in model.modules()
                 for kind, tensors in (("param", module._parameters), ("buffer", module._buffers))
                 for name, tensor in tensors.items() if tensor is not None and tensor.is_floating_point()]
    zero = [(module, name, tensor.data.clone()) for module in model.modules()
            for name, tensor in module._parameters.items()
            if tensor is not None and tensor.is_floating_point() and tensor.numel() and not tensor.any()]
    model.double()
    generator = torch.Generator().manual_seed(1)
    for module, name, _ in zero:
        data = module._parameters[name].data
        data.copy_(torch.rand(data.shape, generator=generator, dtype=data.dtype) + 0.5)
    try:
        yield
    finally:
        for module, kind, name, dtype in originals:
            if kind == "param":
                module._parameters[name].data = module._parameters[name].data.to(dtype)
            else:
                module._buffers[name] = module._buffers[name].to(dtype)
        for module, name, saved in zero:
            module._parameters[name].data = saved


def _record(model: nn.Module, run) -> List[Tuple[str, nn.Module, torch.Tensor]]:
    """Every layer's map output (4-d, or 3-d tokens) in call order."""
    outputs: List[Tuple[str, nn.Module, torch.Tensor]] = []
    names: Dict[int, str] = {id(m): n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(
        lambda mod, _i, out: outputs.append((names[id(mod)], mod, out.detach()))
        if isinstance(out, torch.Tensor) and out.dim() in (3, 4) else None) for m in model.modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _as_map(tokens: torch.Tensor, grid: int) -> Optional[torch.Tensor]:
    """(B, N, C) tokens of a square canvas of ``grid`` patches per side as a (B, H, W, C) map (None: not
    such tokens)."""
    side = round((tokens.shape[1] / grid ** 2) ** 0.5) * grid
    if side == 0 or side * side != tokens.shape[1]:
        return None
    return tokens.reshape(tokens.shape[0], side, side, tokens.shape[2])


def _crop(large: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """The region of ``large`` that corresponds to ``small`` (spatial dims are the ones that differ)."""
    index = []
    for size_large, size_small in zip(large.shape, small.shape):
        offset = (size_large - size_small) // 2
        index.append(slice(offset, offset + size_small))
    return large[tuple(index)]


def verify_sparse_encoder(model: nn.Module, context: MaskContext, in_chans: int, ratio: int) -> None:
    """Raise :class:`UnsupportedLayerError` naming the first layer that breaks sparse semantics."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = torch.float64
    generator = torch.Generator().manual_seed(0)
    small_size, large_size = GRID * ratio, (GRID + 2 * RING) * ratio
    image = torch.randn(1, in_chans, small_size, small_size, generator=generator).to(device, dtype)
    large_image = torch.zeros(1, in_chans, large_size, large_size, device=device, dtype=dtype)
    large_image[..., RING * ratio:RING * ratio + small_size, RING * ratio:RING * ratio + small_size] = image
    small_mask = torch.zeros(1, 1, GRID, GRID, dtype=torch.bool, device=device)
    small_mask[..., GRID // 2, GRID // 2] = True
    large_mask = torch.zeros(1, 1, GRID + 2 * RING, GRID + 2 * RING, dtype=torch.bool, device=device)
    large_mask[..., RING + GRID // 2, RING + GRID // 2] = True

    def encode(x: torch.Tensor, active: torch.Tensor):
        def run():
            with context.use(active):
                model.forward_intermediates(x * context.mask_like(x), indices=4, intermediates_only=True)
        return run

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _in_float64(model):
            small = _record(model, encode(image, small_mask))
            large = _record(model, encode(large_image, large_mask))
    except UnsupportedLayerError:
        raise
    except Exception as error:  # a model that only runs at fixed sizes, or a shape bug inside it
        raise UnsupportedLayerError(
            f"cannot run {type(model).__name__} on {small_size}x{small_size} and {large_size}x{large_size} inputs "
            f"({describe_error(error)}); SparK needs "
            f"an encoder that runs at any input size that is a multiple of its total stride {ratio}") from error
    finally:
        model.train(was_training)
    for (name, module, out_small), (_, _, out_large) in zip(small, large):
        if out_small.dim() == 3:
            out_small, out_large = _as_map(out_small, GRID), _as_map(out_large, GRID + 2 * RING)
            if out_small is None or out_large is None:
                continue  # tokens that are not those of the map (e.g. pooled or class tokens)
        if out_small.shape == out_large.shape:
            continue  # not a spatial map (e.g. pooled attention vectors)
        shared = _crop(out_large, out_small)
        scale = max(out_small.abs().max().item(), ABSOLUTE_FLOOR)
        error = (shared - out_small).abs().max().item() / scale
        ring = out_large.clone()
        _crop(ring, out_small).zero_()
        fills_masked = bool(ring.count_nonzero() > 0)  # the added ring is fully masked: exactly zero
        if error > RELATIVE_TOLERANCE or fills_masked:
            what = "its visible outputs change with the number of masked positions" if error > RELATIVE_TOLERANCE \
                else "it writes non-zero values at masked positions"
            raise UnsupportedLayerError(
                f"cannot make '{name}' ({type(module).__module__}.{type(module).__name__}) sparse: {what} "
                f"(it computes statistics, pooling or attention over all positions in its own forward, so "
                f"masked positions would count); add a rule for it in sparkmim/sparse/rules.py",
                module, depends_on_masked=error > RELATIVE_TOLERANCE)
