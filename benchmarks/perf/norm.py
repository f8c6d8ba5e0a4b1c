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
from sparkmim.sparse.norms import NORM_KERNELS, SparseBatchNorm2d, select_norm_kernel
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
               device: str = "cpu", mask_ratio: float = 0.6, seed: int = 0, precision: str = "fp32",
               kernels: Sequence[str] = ("torch",)) -> List[Dict[str, Any]]:
    """For each (channels, side): median forward+backward time of the masked BatchNorm with each of
    ``kernels`` and of the native BatchNorm, interleaved ``repeats`` times (after one warm-up each).
    ``bf16``: a bf16 input and gradient, as a convolution under bf16 autocast hands the norm, and all
    norms run under autocast. Row keys: ``masked_ms`` (the first kernel), ``masked_<kernel>_ms`` for
    the others, ``native_ms`` and their ratios to native."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    unknown = [kernel for kernel in kernels if kernel not in NORM_KERNELS]
    if unknown or not kernels:
        raise ValueError(f"kernels must be some of {', '.join(NORM_KERNELS)}, got {list(kernels)}")
    names = _columns(kernels)
    dev = torch.device(device)
    amp_dtype = PRECISIONS[precision]
    dtype = amp_dtype or torch.float32
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for channels, side in shapes:
        context = MaskContext()
        sparse = {name: SparseBatchNorm2d(channels, context).to(dev).train() for name in names}
        for name, kernel in zip(names, kernels):
            select_norm_kernel(sparse[name], kernel)
        dense = nn.BatchNorm2d(channels).to(dev).train()
        x = torch.randn(batch, channels, side, side, generator=generator).to(dev, dtype).requires_grad_(True)
        grad = torch.randn(batch, channels, side, side, generator=generator).to(dev, dtype)
        visible = round(mask_grid * mask_grid * (1 - mask_ratio))
        keep = torch.rand(batch, mask_grid * mask_grid, generator=generator).argsort(1)[:, :visible]
        active = torch.zeros(batch, mask_grid * mask_grid, dtype=torch.bool).scatter_(1, keep, True)
        active = active.view(batch, 1, mask_grid, mask_grid).to(dev)

        def run_sparse(norm: nn.Module) -> None:
            with context.use(active), autocast(dev, amp_dtype):
                norm(x).backward(grad)

        def run_dense() -> None:
            with autocast(dev, amp_dtype):
                dense(x).backward(grad)

        runs = [(name, lambda norm=sparse[name]: run_sparse(norm)) for name in names] + [("native", run_dense)]
        times: Dict[str, List[float]] = {name: [] for name, _ in runs}
        for index in range(repeats + 1):
            for name, run in runs:
                elapsed = _time(run, dev)
                if index:
                    times[name].append(elapsed)
        row: Dict[str, Any] = {"channels": channels, "side": side}
        native = statistics.median(times["native"])
        for name in names:
            row[f"{name}_ms"] = statistics.median(times[name]) * 1e3
            row["ratio" if name == "masked" else f"{name}_ratio"] = row[f"{name}_ms"] / (native * 1e3)
        row["native_ms"] = native * 1e3
        rows.append(row)
    return rows


def _columns(kernels: Sequence[str]) -> List[str]:
    """Row-key stems of the kernels' times: ``masked`` for the first (the keys the table had with one
    kernel), ``masked_<kernel>`` for the others."""
    return ["masked" if index == 0 else f"masked_{kernel}" for index, kernel in enumerate(kernels)]


def format_norms(rows: List[Dict[str, Any]], batch: int, precision: str = "fp32",
                 kernels: Sequence[str] = ("torch",)) -> str:
    """The table of :func:`time_norms` run with ``kernels``."""
    columns = _columns(kernels)
    titles = [f"masked, {kernel}" for kernel in kernels]
    lines = [f"BatchNorm forward+backward, batch {batch}, {precision}, median of interleaved runs", "",
             "| channels x side | " + " | ".join(f"{t} (ms)" for t in titles) + " | native (ms) | "
             + " | ".join(f"{t} / native" for t in titles) + " |",
             "|---|" + "---|" * (2 * len(columns) + 1)]
    totals = {"channels": "all shapes", "side": None, **{f"{c}_ms": sum(r[f"{c}_ms"] for r in rows) for c in columns + ["native"]}}
    for row in rows + [totals]:
        label = row["channels"] if row["side"] is None else f"{row['channels']} x {row['side']}"
        lines.append(f"| {label} | " + " | ".join(f"{row[f'{c}_ms']:.2f}" for c in columns)
                     + f" | {row['native_ms']:.2f} | "
                     + " | ".join(f"{row[f'{c}_ms'] / row['native_ms']:.2f}" for c in columns) + " |")
    return "\n".join(lines)
