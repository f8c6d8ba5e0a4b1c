"""Micro-benchmark of one masked BatchNorm (forward + backward) against the native BatchNorm.

Why: the profile of a full step shows the masked BatchNorm as the largest cost of SparK over the
dense network; timing it alone, on the feature-map shapes of a real encoder, gives a quick loop for
optimising it (seconds instead of minutes) with the same interleaved, median-of-many method.
"""
import statistics
import time
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn

from sparkmim.sparse.context import MaskContext
from sparkmim.sparse.norms import SparseBatchNorm2d
from sparkmim.utils.run import autocast

from .step import PRECISIONS

# (channels, side) of ResNet-50's BatchNorm inputs at 224 px: stem, then one per stage width
RESNET50_SHAPES: Tuple[Tuple[int, int], ...] = ((64, 112), (64, 56), (256, 56), (128, 28), (512, 28),
                                                (256, 14), (1024, 14), (512, 7), (2048, 7))


def _time(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tick = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - tick


def time_norms(batch: int, shapes: Sequence[Tuple[int, int]], mask_grid: int = 7, repeats: int = 10,
               device: str = "cpu", mask_ratio: float = 0.6, seed: int = 0, precision: str = "fp32"
               ) -> List[Dict[str, Any]]:
    """For each (channels, side): median forward+backward time of the masked and the native BatchNorm,
    interleaved ``repeats`` times (after one warm-up each). ``bf16``: a bf16 input and gradient, as a
    convolution under bf16 autocast hands the norm, and both norms run under autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    amp_dtype = PRECISIONS[precision]
    dtype = amp_dtype or torch.float32
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for channels, side in shapes:
        context = MaskContext()
        sparse = SparseBatchNorm2d(channels, context).to(dev).train()
        dense = nn.BatchNorm2d(channels).to(dev).train()
        x = torch.randn(batch, channels, side, side, generator=generator).to(dev, dtype).requires_grad_(True)
        grad = torch.randn(batch, channels, side, side, generator=generator).to(dev, dtype)
        visible = round(mask_grid * mask_grid * (1 - mask_ratio))
        keep = torch.rand(batch, mask_grid * mask_grid, generator=generator).argsort(1)[:, :visible]
        active = torch.zeros(batch, mask_grid * mask_grid, dtype=torch.bool).scatter_(1, keep, True)
        active = active.view(batch, 1, mask_grid, mask_grid).to(dev)

        def run_sparse() -> None:
            with context.use(active), autocast(dev, amp_dtype):
                sparse(x).backward(grad)

        def run_dense() -> None:
            with autocast(dev, amp_dtype):
                dense(x).backward(grad)

        times: Dict[str, List[float]] = {"masked": [], "native": []}
        for index in range(repeats + 1):
            for name, run in (("masked", run_sparse), ("native", run_dense)):
                elapsed = _time(run, dev)
                if index:
                    times[name].append(elapsed)
        masked, native = statistics.median(times["masked"]), statistics.median(times["native"])
        rows.append({"channels": channels, "side": side, "masked_ms": masked * 1e3, "native_ms": native * 1e3,
                     "ratio": masked / native})
    return rows


def format_norms(rows: List[Dict[str, Any]], batch: int, precision: str = "fp32") -> str:
    lines = [f"BatchNorm forward+backward, batch {batch}, {precision}, median of interleaved runs", "",
             "| channels x side | masked (ms) | native (ms) | masked/native |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['channels']} x {row['side']} | {row['masked_ms']:.2f} | {row['native_ms']:.2f} | "
                     f"{row['ratio']:.2f} |")
    total_masked, total_native = sum(r["masked_ms"] for r in rows), sum(r["native_ms"] for r in rows)
    lines.append(f"| all shapes | {total_masked:.2f} | {total_native:.2f} | {total_masked / total_native:.2f} |")
    return "\n".join(lines)
