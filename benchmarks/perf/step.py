"""Time one full training step (forward, backward, optimizer step) of one benchmark variant.

Variants: (a) ``spark``: sparkmim's SparK; (b) ``dense``: the dense floor (:mod:`bench_dense`);
(c) ``naive``: the reference-style masked SparK (:mod:`bench_naive`). Each step draws a new random
mask (inside the model, as in training), uses synthetic images already on the device (so data loading
is excluded; see :mod:`.e2e` for that) and timm's LAMB as spark-pretrain does.

Step times are wall-clock, device-synchronised before and after each step; the summary is the median
after warm-up. Peak memory: CUDA ``max_memory_allocated``; on CPU the growth of the process's peak
resident set (VmHWM) over its size before the first step, which covers gradients, optimizer state
and activations and is only meaningful when the variant runs alone in its process (the default).
"""
import contextlib
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from sparkmim.utils.run import autocast

logger = logging.getLogger(__name__)

VARIANTS = {"spark": "a", "dense": "b", "naive": "c"}
VARIANT_TITLES = {"spark": "(a) sparkmim SparK", "dense": "(b) dense floor", "naive": "(c) naive reference"}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class StepConfig:
    model: str = "resnet50"
    batch: int = 8
    size: int = 224
    precision: str = "fp32"
    device: str = "cpu"
    channels_last: bool = False
    compile: bool = False
    norm_kernel: str = "torch"  # SparK's BatchNorm training kernel: torch or triton (sparkmim.sparse.norms)
    warmup: int = 3
    steps: int = 10
    threads: Optional[int] = None
    seed: int = 0
    decoder_width: int = 768
    mask_ratio: float = 0.6
    drop_path: float = 0.0

    def encoder_kwargs(self) -> Dict[str, Any]:
        return {"drop_path_rate": self.drop_path} if self.drop_path else {}


def summarised_variants(summary: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """(title, statistics) of each variant in a summary, in the order (a), (b), (c)."""
    return [(title, summary["variants"][variant]) for variant, title in VARIANT_TITLES.items()
            if variant in summary["variants"]]


def describe_config(config: "StepConfig", threads: Any) -> str:
    """The first line of every benchmark table: what was measured, where."""
    return (f"model {config.model}, {config.size} px, batch {config.batch}, {config.precision}, "
            f"device {config.device}, channels_last {config.channels_last}, compile {config.compile}, "
            f"norm kernel {config.norm_kernel}, "
            f"threads {threads}")


def build_variant(variant: str, config: StepConfig) -> nn.Module:
    """The model of one variant, in training mode, on the configured device and memory format."""
    from sparkmim import build_spark

    from .dense import build_dense
    from .naive import naive_like

    torch.manual_seed(config.seed)
    spark = build_spark(config.model, input_size=config.size, mask_ratio=config.mask_ratio,
                        decoder_width=config.decoder_width, encoder_kwargs=config.encoder_kwargs())
    if variant == "spark":
        from sparkmim.sparse.norms import check_norm_kernel, select_norm_kernel
        # here, not only in the layers: a compiled step skips their check (see sparkmim.sparse.norms)
        check_norm_kernel(config.norm_kernel, torch.device(config.device))
        select_norm_kernel(spark, config.norm_kernel)
        model: nn.Module = spark
    elif variant == "naive":
        model = naive_like(spark, config.model, encoder_kwargs=config.encoder_kwargs())
    elif variant == "dense":
        model = build_dense(config.model, input_size=config.size, decoder_width=config.decoder_width,
                            densify_norm=spark.densify_norm, encoder_kwargs=config.encoder_kwargs())
    else:
        raise ValueError(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")
    model = model.to(config.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """spark-pretrain's optimizer (timm LAMB with global-norm clipping, two decay groups)."""
    from sparkmim.pretrain.optim import build_optimizer
    return build_optimizer(model, lr=1e-4, betas=(0.9, 0.95), clip_grad=5.0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_of(output: Any) -> torch.Tensor:
    """The loss of a variant's output: SparK returns an object with ``.loss``, the others the loss itself."""
    return output.loss if hasattr(output, "loss") else output


def step_function(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  amp_dtype: Optional[torch.dtype], compiled: bool,
                  phase_ranges: bool = False) -> Callable[[], torch.Tensor]:
    """One training step as a closure: zero grads, forward (autocast), backward, optimizer step.

    ``phase_ranges`` names the three phases for torch.profiler ("phase: forward", ...)."""
    forward = torch.compile(model) if compiled else model

    def phase(name: str):
        return torch.profiler.record_function(f"phase: {name}") if phase_ranges else contextlib.nullcontext()

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with phase("forward"), autocast(images.device, amp_dtype):
            loss = loss_of(forward(images)).float()
        with phase("backward"):
            loss.backward()
        with phase("optimizer"):
            optimizer.step()
        return loss.detach()
    return step


@dataclass
class VariantStep:
    """One variant ready to run: its model, optimizer and the closure of a full training step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[], torch.Tensor]


def check_run_settings(config: StepConfig) -> None:
    """Apply ``--threads`` and refuse an unknown precision (before any model is built)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{config.precision}'")


def build_step(variant: str, config: StepConfig, images: Optional[torch.Tensor] = None,
               phase_ranges: bool = False) -> VariantStep:
    """Model, LAMB and step closure of ``variant``; ``images`` defaults to the configured synthetic batch."""
    model = build_variant(variant, config)
    optimizer = make_optimizer(model)
    if images is None:
        images = make_images(config, torch.device(config.device))
    step = step_function(model, optimizer, images, PRECISIONS[config.precision], config.compile,
                         phase_ranges=phase_ranges)
    return VariantStep(model=model, optimizer=optimizer, step=step)


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_images(config: StepConfig, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(config.seed + 1)
    images = torch.randn(config.batch, 3, config.size, config.size, generator=generator).to(device)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def measure(variant: str, config: StepConfig) -> Dict[str, Any]:
    """Build ``variant``, run warm-up + timed steps, and return its step times and peak memory."""
    check_run_settings(config)
    device = torch.device(config.device)
    step = build_step(variant, config).step

    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        rss_base = None
    else:
        rss_reset = reset_peak_rss()
        rss_base = _proc_status_kib("VmRSS") if rss_reset else None
    times: List[float] = []
    loss = torch.zeros(())
    for index in range(config.warmup + config.steps):
        synchronize(device)
        tick = time.perf_counter()
        loss = step()
        synchronize(device)
        if index >= config.warmup:
            times.append(time.perf_counter() - tick)
    if device.type == "cuda":
        peak_mib: Optional[float] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        memory_kind = "cuda max_memory_allocated"
    else:
        peak = _proc_status_kib("VmHWM")
        peak_mib = (peak - rss_base) / 1024 if peak is not None and rss_base is not None else None
        memory_kind = "peak RSS growth over the step loop"
    median = statistics.median(times) if times else float("nan")
    result = {"variant": variant, "label": VARIANTS[variant], "config": asdict(config),
              "step_times_s": times, "median_s": median, "images_per_s": config.batch / median,
              "peak_memory_mib": peak_mib, "memory_kind": memory_kind, "final_loss": float(loss),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    logger.info("%s (%s): median step %.4f s, %.2f images/s", variant, VARIANTS[variant], median,
                result["images_per_s"])
    return result
