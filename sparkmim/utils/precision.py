"""The dtype that precision-sensitive computations (normalisation statistics, the loss) run in."""
import torch


def reduction_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision tensors (autocast), the tensor's own dtype otherwise.

    A plain ``.float()`` would also turn a float64 run into float32 at that point: its results would
    then agree with another device's only to float32 rounding, and float64 checks would test nothing."""
    return torch.promote_types(x.dtype, torch.float32)


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`reduction_dtype` (unchanged when it already is)."""
    return x.to(reduction_dtype(x))
