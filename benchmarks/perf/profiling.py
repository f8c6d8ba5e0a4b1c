"""Where the extra time of sparkmim's SparK (a) over the dense floor (b) goes: torch.profiler side by side.

Four views, all per training step (averaged over the profiled steps):

- phases: forward, backward, optimizer step;
- ops: self time of every ATen op in (a) and (b) and the difference, as a share of (a)'s step;
- backward nodes: time of each autograd node type (the masked BatchNorm's backward, the backward of
  the re-masking multiplies, ...) in (a) and (b);
- forward by layer kind: leaf modules are wrapped in profiler ranges named by kind (BatchNorm,
  convolution with its re-mask hook, pooling, ...), so the forward cost of each kind compares directly.

The ranges come from forward pre-hooks and hooks registered on the model instance only for the
profiled steps, and removed afterwards.
"""
import logging
import time
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from .step import StepConfig, build_step, check_run_settings, synchronize

logger = logging.getLogger(__name__)

BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
RANGE_PREFIX = "layer: "
PHASE_PREFIX = "phase: "


def layer_kind(module: nn.Module) -> str:
    """A short name for the kind of a leaf layer (the unit of the forward view)."""
    name = type(module).__name__
    if "BatchNorm" in name:
        return "BatchNorm"
    if "LayerNorm" in name:
        return "LayerNorm"
    if isinstance(module, nn.ConvTranspose2d):
        return "ConvTranspose2d"
    if isinstance(module, nn.Conv2d):
        return "Conv2d"
    if "Pool" in name:
        return "Pooling"
    if isinstance(module, nn.Linear):
        return "Linear"
    return name


class _Ranges:
    """Forward pre-hook / hook pair that opens and closes a profiler range around each leaf layer."""

    def __init__(self) -> None:
        self.open: Dict[int, List[Any]] = {}

    def before(self, module: nn.Module, _args: tuple) -> None:
        scope = record_function(RANGE_PREFIX + layer_kind(module))
        scope.__enter__()
        self.open.setdefault(id(module), []).append(scope)

    def after(self, module: nn.Module, _args: tuple, _output: Any) -> None:
        self.open[id(module)].pop().__exit__(None, None, None)


def _wrap_leaves(model: nn.Module) -> List[Any]:
    ranges = _Ranges()
    handles = []
    for module in model.modules():
        if list(module.children()) or not (list(module.parameters(recurse=False)) or "Pool" in type(module).__name__):
            continue
        handles.append(module.register_forward_pre_hook(ranges.before))
        # registered after the layer's own hooks (e.g. re-masking), so the range includes them
        handles.append(module.register_forward_hook(ranges.after))
    return handles


def profile_one(variant: str, config: StepConfig, steps: int) -> Dict[str, Any]:
    """Profile ``steps`` training steps of one variant after its warm-up.

    On CPU every view is CPU time. On CUDA it is GPU kernel time: an op's own kernels, and for a range
    or a backward node the kernels launched inside it; CPU time there would only be launch overhead.
    Only the CPU-side rows are read (each ``record_function`` range also gets a GPU annotation row of the
    same name). The backward's kernels are launched from autograd's own thread, outside the main
    thread's ranges, so on CUDA the backward phase is the sum of the backward nodes, and the step time
    is the synchronised wall clock."""
    device = torch.device(config.device)
    cuda = device.type == "cuda"
    built = build_step(variant, config, phase_ranges=True)
    model, step = built.model, built.step
    for _ in range(config.warmup):
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    handles = _wrap_leaves(model)
    try:
        with profile(activities=activities) as prof:
            tick = time.perf_counter()
            for _ in range(steps):
                with record_function("training step"):
                    step()
                synchronize(device)
            wall_us = (time.perf_counter() - tick) * 1e6 / steps
    finally:
        for handle in handles:
            handle.remove()
    ops: Dict[str, float] = {}
    backward: Dict[str, float] = {}
    layers: Dict[str, float] = {}
    phases: Dict[str, float] = {}
    step_us = wall_us
    for event in prof.key_averages():
        if event.device_type != DeviceType.CPU:
            continue
        total = (event.device_time_total if cuda else event.cpu_time_total) / steps
        if event.key == "training step":
            step_us = wall_us if cuda else total
        elif event.key.startswith(BACKWARD_PREFIX):
            backward[event.key[len(BACKWARD_PREFIX):]] = total
        elif event.key.startswith(PHASE_PREFIX):
            phases[event.key[len(PHASE_PREFIX):]] = total
        elif event.key.startswith(RANGE_PREFIX):
            layers[event.key[len(RANGE_PREFIX):]] = total
        elif event.key.startswith("aten::") or event.key.startswith("MaskedBatchNorm"):
            ops[event.key] = (event.self_device_time_total if cuda else event.self_cpu_time_total) / steps
    if cuda and backward:
        phases["backward"] = sum(backward.values())
    logger.info("profiled %s: %.3f s per step (with profiler overhead)", variant, step_us / 1e6)
    return {"variant": variant, "time": "GPU kernel time" if cuda else "CPU time", "step_ms": step_us / 1e3,
            "ops_self_ms": {k: v / 1e3 for k, v in ops.items()},
            "phases_ms": {k: v / 1e3 for k, v in phases.items()},
            "backward_ms": {k: v / 1e3 for k, v in backward.items()},
            "forward_layers_ms": {k: v / 1e3 for k, v in layers.items()}}


def profile_variants(config: StepConfig, steps: int) -> Dict[str, Any]:
    """Profile (a) then (b) in this process and put their views side by side."""
    check_run_settings(config)
    spark = profile_one("spark", config, steps)
    dense = profile_one("dense", config, steps)
    return {"config": config.__dict__, "spark": spark, "dense": dense}


def _diff_rows(a: Dict[str, float], b: Dict[str, float], step_ms: float, top: int) -> List[Tuple[str, float, float, float, float]]:
    rows = [(name, a.get(name, 0.0), b.get(name, 0.0), a.get(name, 0.0) - b.get(name, 0.0),
             100.0 * (a.get(name, 0.0) - b.get(name, 0.0)) / step_ms) for name in set(a) | set(b)]
    rows.sort(key=lambda row: row[3], reverse=True)
    return rows[:top]


def format_profile(report: Dict[str, Any], top: int = 20) -> str:
    """Markdown tables: the step times, then each view sorted by (a) - (b)."""
    spark, dense = report["spark"], report["dense"]
    step_ms = spark["step_ms"]
    time_kind = spark.get("time", "CPU time")
    lines = [f"profiled step (profiler overhead included): (a) {step_ms:.1f} ms, (b) {dense['step_ms']:.1f} ms, "
             f"(a)-(b) {step_ms - dense['step_ms']:.1f} ms = {100 * (step_ms - dense['step_ms']) / step_ms:.1f}% of (a)"]
    views = ((f"phases of the step, total {time_kind} (ms per step)", "phases_ms"),
             (f"ATen ops by self {time_kind} (ms per step)", "ops_self_ms"),
             (f"backward autograd nodes, total {time_kind} (ms per step)", "backward_ms"),
             (f"forward by layer kind, total {time_kind} incl. hooks (ms per step)", "forward_layers_ms"))
    for title, key in views:
        lines += ["", f"{title}; sorted by (a)-(b); share = (a)-(b) over (a)'s step",
                  "", "| name | (a) | (b) | (a)-(b) | share of (a) |", "|---|---|---|---|---|"]
        for name, a_ms, b_ms, delta, share in _diff_rows(spark[key], dense[key], step_ms, top):
            marker = " (only in a)" if b_ms == 0.0 and a_ms > 0 else ""
            lines.append(f"| {name}{marker} | {a_ms:.1f} | {b_ms:.1f} | {delta:+.1f} | {share:+.1f}% |")
    return "\n".join(lines)
