"""Part 2: no host-device synchronisation in a training step.

The model step alone (forward, backward, LAMB; ``spark-bench sync``'s step) and a full
``spark-pretrain`` loop step (schedule, accumulation, loss kept on the device, gradient norm, LAMB),
each recorded at the dispatcher (any device) and, on CUDA, run under
``torch.cuda.set_sync_debug_mode('error')``; the model step also with the fused triton norm kernel
where it runs (CUDA, triton installed)."""
import itertools
from typing import Dict, Optional

import torch

from .failures import record_failure
from .options import CheckOptions
from .results import NO_CUDA, PartResult


def _verdict(result: PartResult, what: str, ops: Dict[str, int], cuda_error: Optional[str], cuda: bool) -> None:
    listed = ", ".join(f"{op} x{n}" for op, n in sorted(ops.items())) or "none"
    result.add(f"{what}: no syncing op at the dispatcher", not ops, f"syncing ops: {listed}")
    if cuda:
        result.add(f"{what}: passes torch.cuda.set_sync_debug_mode('error')", cuda_error is None, cuda_error or "")
    else:
        result.add(f"{what}: passes torch.cuda.set_sync_debug_mode('error')", None, NO_CUDA)


def model_step(options: CheckOptions, result: PartResult) -> None:
    from sparkmim.benchmarks.perf.step import StepConfig
    from sparkmim.benchmarks.perf.sync_check import step_sync_report

    model, size, batch = ("test_resnet", 64, 2) if options.quick else ("resnet50", 224, 32)
    for precision, kernel in itertools.product(("fp32", "bf16"), options.norm_kernels):
        config = StepConfig(model=model, size=size, batch=batch, precision=precision, device=options.device,
                            decoder_width=32 if options.quick else 768, norm_kernel=kernel)
        what = f"model step, {model} {precision}" + ("" if kernel == "torch" else f", {kernel} norm kernel")
        try:
            report = step_sync_report("spark", config)
        except Exception as error:  # noqa: BLE001 - recorded; the other steps are still checked
            record_failure(result, f"{what}: runs", error, options.torch_device)
            continue
        _verdict(result, what, report["syncing_ops"], report.get("cuda_sync_debug_error"), options.cuda)


def pretrain_loop_step(options: CheckOptions, result: PartResult) -> None:
    """The loop of spark-pretrain itself, with its real objects, on synthetic batches."""
    from sparkmim import build_spark
    from sparkmim.benchmarks.perf.sync_check import cuda_sync_debug_passes, optimizer_host_scalars, record_host_syncs
    from sparkmim.pretrain.data import SkipReporter
    from sparkmim.pretrain.engine import Loop
    from sparkmim.pretrain.optim import build_optimizer
    from sparkmim.utils.distributed import DistInfo
    from sparkmim.utils.metrics import MetricsLogger
    from sparkmim.utils.schedule import Schedule
    from sparkmim.utils.signals import GracefulStop

    device = options.torch_device
    model, size, batch = ("test_resnet", 64, 2) if options.quick else ("resnet50", 224, 32)
    torch.manual_seed(0)
    spark = build_spark(model, input_size=size, decoder_width=32 if options.quick else 768).to(device).train()
    optimizer = build_optimizer(spark, lr=1e-4, betas=(0.9, 0.95), clip_grad=5.0)
    images = torch.randn(batch, 3, size, size)
    if options.cuda:  # as spark-pretrain's loader hands batches over (pin_memory on CUDA)
        images = images.pin_memory()

    def batches():
        for _ in itertools.count():
            yield images, []
    loop = Loop(model=spark, params=list(spark.parameters()), optimizer=optimizer, scaler=None,
                schedule=Schedule(total_steps=100, warmup_steps=5, peak_lr=1e-4, weight_decay=0.04,
                                  weight_decay_end=0.2),
                batches=batches(), accumulation=2, steps_per_epoch=100, total_steps=100, global_batch=2 * batch,
                dist_info=DistInfo(rank=0, world_size=1, local_rank=0, device=device),
                metrics=MetricsLogger(options.scratch_dir / "sync_loop", enabled=False), skips=SkipReporter([]),
                stop=GracefulStop(), save=lambda step: None, amp_dtype=torch.bfloat16, progress=False)
    loop.train_step(0)  # the optimizer state exists from here on
    ops = record_host_syncs(lambda: loop.train_step(1), optimizer_host_scalars(optimizer))
    cuda_error = cuda_sync_debug_passes(lambda: loop.train_step(2)) if options.cuda else None
    _verdict(result, f"spark-pretrain loop step, {model} bf16, 2 accumulation steps", ops, cuda_error, options.cuda)


def run(options: CheckOptions, result: PartResult) -> None:
    model_step(options, result)
    pretrain_loop_step(options, result)

