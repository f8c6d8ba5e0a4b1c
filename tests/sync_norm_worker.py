"""Run under torchrun (2 processes, gloo): cross-process BatchNorm on half a batch per rank must equal
one process on the whole batch. Rank 0 writes the comparison to the file given as argument.
With TRITON_INTERPRET=1 in the environment the triton norm kernel is compared too (Triton's interpreter)."""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from sparkmim.sparse.context import MaskContext
from sparkmim.sparse.norms import CrossProcessBatchNorm2d, SparseBatchNorm2d, select_norm_kernel
from tests.core_utils import random_mask


def run_norm(norm: nn.Module, context: MaskContext, x: torch.Tensor, active: torch.Tensor, upstream: torch.Tensor):
    x = x.clone().requires_grad_()
    with context.use(active):
        out = norm(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8, 8) * 2 + 0.5
    active = random_mask(4, 2, 2, visible=2, seed=1)
    upstream = torch.randn(4, 6, 8, 8)
    half = slice(2 * rank, 2 * rank + 2)
    errors = {}
    kernels = ("torch", "triton") if os.environ.get("TRITON_INTERPRET") == "1" else ("torch",)
    for kind, kernel in [(kind, kernel) for kind in ("sparse", "dense") for kernel in kernels]:
        results = {}
        for sync in (False, True):
            context = MaskContext()
            torch.manual_seed(1)  # the same affine parameters for the single-process and the synced norm
            dense = nn.BatchNorm2d(6)
            with torch.no_grad():
                dense.weight.uniform_(0.5, 1.5), dense.bias.uniform_(-1, 1)
            norm = (SparseBatchNorm2d.from_dense(dense, context, sync=sync) if kind == "sparse"
                    else CrossProcessBatchNorm2d.from_dense(dense) if sync else dense)
            select_norm_kernel(norm, kernel)
            part = slice(None) if not sync else half
            out, grad = run_norm(norm, context, x[part], active[part], upstream[part])
            results[sync] = (out, grad, norm.running_mean.clone(), norm.running_var.clone())
        single, synced = results[False], results[True]
        errors[kind if kernel == "torch" else f"{kind}_{kernel}"] = max((single[0][half] - synced[0]).abs().max().item(),
                           (single[1][half] - synced[1]).abs().max().item(),
                           (single[2] - synced[2]).abs().max().item(),
                           (single[3] - synced[3]).abs().max().item())
    if rank == 0:
        with open(sys.argv[1], "w") as handle:
            json.dump(errors, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
