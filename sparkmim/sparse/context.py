"""The mask context: the one piece of state a sparse encoder's layers share during a forward.

Each sparse encoder owns one :class:`MaskContext`; its converted layers hold a reference to it. SparK
sets the visible mask before encoding and clears it afterwards (also on error), so two models in one
process (a teacher, an EMA copy made with ``copy.deepcopy``) never see each other's mask.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import torch


def upsample_mask(active_b1hw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest upsampling of a (B, 1, h, w) mask to (B, 1, height, width), both multiples of (h, w).

    A broadcast view reshaped once (no interpolation kernel, any dtype, bool included)."""
    batch, _, h, w = active_b1hw.shape
    if height % h or width % w:
        raise ValueError(f"feature map of size {height}x{width} is not a whole multiple of the mask grid {h}x{w}")
    rep_h, rep_w = height // h, width // w
    return (active_b1hw[:, :, :, None, :, None]
            .expand(batch, 1, h, rep_h, w, rep_w)
            .reshape(batch, 1, height, width))


class MaskNotSetError(RuntimeError):
    """A sparse layer ran outside a masked forward (no visible mask was set)."""


class MaskContext:
    """Holds the visible mask (B, 1, h, w) at the coarsest resolution and its nearest-upsampled copies.

    Each resolution/dtype/layout is built once per forward and cached until the mask is cleared."""

    def __init__(self) -> None:
        self._active_b1hw: Optional[torch.Tensor] = None
        self._cache: Dict[Tuple[int, int, torch.dtype, bool], torch.Tensor] = {}

    @property
    def active(self) -> torch.Tensor:
        if self._active_b1hw is None:
            raise MaskNotSetError(
                "a sparse layer ran without a visible mask; call the model through SparK.forward/encode "
                "or SparseEncoder.forward(images, active)")
        return self._active_b1hw

    @contextmanager
    def use(self, active_b1hw: torch.Tensor) -> Iterator[None]:
        """Make ``active_b1hw`` (bool, True = visible) the current mask for the duration of the block.

        Re-entrant: a nested block with the same model restores the outer mask when it ends."""
        if active_b1hw.dim() != 4 or active_b1hw.shape[1] != 1:
            raise ValueError(f"the visible mask must have shape (B, 1, h, w), got {tuple(active_b1hw.shape)}")
        previous = (self._active_b1hw, self._cache)
        active_b1hw = active_b1hw.bool()
        if active_b1hw is not self._active_b1hw:  # a nested block with the same mask keeps the cache
            self._active_b1hw, self._cache = active_b1hw, {}
        try:
            yield
        finally:
            self._active_b1hw, self._cache = previous

    def mask(self, height: int, width: int, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
        """The visible mask at (height, width) as ``dtype``: (B, 1, H, W), or (B, H, W, 1) for BHWC tensors."""
        key = (height, width, dtype, channels_last)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        try:
            upsampled = upsample_mask(self.active, height, width).to(dtype)
        except ValueError as error:
            raise ValueError(f"{error}; sparse layers need every feature map at a resolution of at least the "
                             f"mask's, with the input size a multiple of the total stride") from None
        if channels_last:
            upsampled = upsampled.permute(0, 2, 3, 1)
        self._cache[key] = upsampled
        return upsampled

    def layout_of(self, x: torch.Tensor, prefer: Optional[str] = None) -> Optional[str]:
        """How a layer's output lies over the mask grid: ``"bchw"`` or ``"bhwc"`` (a feature map whose sides are
        the same whole multiple of the grid's), ``"bnc"`` (tokens of such a map flattened row by row),
        ``"pooled"`` (a 1x1 map or a vector: no positions left to mask), or None (a map not aligned with
        the grid, e.g. after an unpadded convolution). ``prefer``: the layout the layer is known to
        produce, taken when it fits (a channels-last map can look channels-first by coincidence)."""
        grid_h, grid_w = self.active.shape[-2:]

        def aligned(height: int, width: int) -> bool:
            return height % grid_h == 0 and width % grid_w == 0 and height // grid_h == width // grid_w > 0

        if x.dim() == 4 and prefer == "bhwc" and aligned(x.shape[1], x.shape[2]):
            return "bhwc"
        if x.dim() == 4:
            if aligned(x.shape[-2], x.shape[-1]):
                return "bchw"
            if aligned(x.shape[1], x.shape[2]):
                return "bhwc"
            return "pooled" if x.shape[-2:] == (1, 1) else None
        if x.dim() == 3:
            return "bnc" if self._token_side(x.shape[1]) else None
        return "pooled" if x.dim() <= 2 else None

    def _token_side(self, tokens: int) -> int:
        """k when ``tokens`` flatten a map of (grid_h * k) x (grid_w * k) positions, else 0."""
        grid_h, grid_w = self.active.shape[-2:]
        side = round((tokens / (grid_h * grid_w)) ** 0.5)
        return side if side > 0 and side * side * grid_h * grid_w == tokens else 0

    def mask_for(self, x: torch.Tensor, layout: str) -> torch.Tensor:
        """The mask broadcastable to ``x`` in ``layout`` (see :meth:`layout_of`)."""
        if layout == "bchw":
            return self.mask_like(x)
        if layout == "bhwc":
            return self.mask_like(x, channels_last=True)
        grid_h, grid_w = self.active.shape[-2:]
        side = self._token_side(x.shape[1])
        return self.mask(grid_h * side, grid_w * side, x.dtype, channels_last=True).reshape(x.shape[0], -1, 1)

    def mask_like(self, x: torch.Tensor, channels_last: bool = False, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The mask matching feature map ``x`` (BCHW, or BHWC when ``channels_last``)."""
        height, width = (x.shape[1], x.shape[2]) if channels_last else (x.shape[-2], x.shape[-1])
        return self.mask(height, width, dtype or x.dtype, channels_last)
