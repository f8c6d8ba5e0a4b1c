"""Step-level paired timing: every variant in one process, steps alternating, ratios per round.

Why: on a machine shared with other jobs, load changes over seconds to minutes. ``spark-bench step``
runs each variant in its own process (clean peak memory) and interleaves whole runs, so a burst of
load that hits one run and not the other moves a/b by tens of percent. Here the variants' steps
alternate (round r runs a, b, ... in forward order when r is even and in reverse when r is odd, so
a slow drift weighs on both equally), and a/b and c/a are taken inside each round from steps a few
seconds apart. The median over rounds is robust to bursts that hit single steps. Peak memory is not
reported: all variants share the process, so it cannot be attributed (use ``spark-bench step``).
"""
import logging
import statistics
import time
from typing import Any, Callable, Dict, List, Sequence

import torch

from .step import VARIANTS, StepConfig, build_step, check_run_settings, describe_config, make_images
from .step import summarised_variants, synchronize

logger = logging.getLogger(__name__)

RATIOS = (("a/b", "spark", "dense"), ("c/a", "naive", "spark"))


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _describe(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "q1": _quantile(values, 0.25), "q3": _quantile(values, 0.75),
            "min": min(values), "max": max(values), "n": len(values)}


def measure_paired(variants: Sequence[str], config: StepConfig, rounds: int) -> Dict[str, Any]:
    """Build every variant, warm each up ``config.warmup`` steps, then time ``rounds`` rounds."""
    check_run_settings(config)
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    device = torch.device(config.device)
    images = make_images(config, device)
    steps: Dict[str, Callable[[], torch.Tensor]] = {}
    for variant in variants:
        steps[variant] = build_step(variant, config, images).step
    for variant in variants:
        for _ in range(config.warmup):
            steps[variant]()
    times: Dict[str, List[float]] = {variant: [] for variant in variants}
    per_round: List[Dict[str, float]] = []
    for index in range(rounds):
        order = list(variants) if index % 2 == 0 else list(reversed(variants))
        this_round = {}
        for variant in order:
            synchronize(device)
            tick = time.perf_counter()
            steps[variant]()
            synchronize(device)
            this_round[variant] = time.perf_counter() - tick
            times[variant].append(this_round[variant])
        per_round.append(this_round)
        logger.info("round %d/%d: %s", index + 1, rounds,
                    ", ".join(f"{v} {t:.3f} s" for v, t in this_round.items()))
    summary: Dict[str, Any] = {"variants": {}, "ratios": {}}
    for variant, values in times.items():
        summary["variants"][variant] = {"label": VARIANTS[variant], "step_s": _describe(values),
                                        "images_per_s": config.batch / statistics.median(values)}
    for name, top, bottom in RATIOS:
        if top in times and bottom in times:
            summary["ratios"][name] = _describe([r[top] / r[bottom] for r in per_round])
            summary["ratios"][f"{name} fastest steps"] = {"median": min(times[top]) / min(times[bottom])}
    return {"summary": summary, "rounds": per_round, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def format_paired(report: Dict[str, Any], config: StepConfig) -> str:
    """Markdown tables of a paired measurement (what ``spark-bench paired`` prints)."""
    summary = report["summary"]
    rounds = len(report["rounds"])
    lines = [f"{describe_config(config, report['threads'])}, one process, {config.warmup} warm-up steps per "
             f"variant, {rounds} alternating rounds",
             "",
             "| variant | step time: median [q1, q3] (s) | fastest step (s) | images/s (from median) |",
             "|---|---|---|---|"]
    for title, stats in summarised_variants(summary):
        step = stats["step_s"]
        lines.append(f"| {title} | {step['median']:.3f} [{step['q1']:.3f}, {step['q3']:.3f}] | "
                     f"{step['min']:.3f} | {stats['images_per_s']:.2f} |")
    lines += ["", "| ratio (per round) | median | q1 | q3 | min | max |", "|---|---|---|---|---|---|"]
    for name, stats in summary["ratios"].items():
        if "q1" in stats:
            lines.append(f"| {name} | {stats['median']:.3f} | {stats['q1']:.3f} | {stats['q3']:.3f} | "
                         f"{stats['min']:.3f} | {stats['max']:.3f} |")
        else:
            lines.append(f"| {name} | {stats['median']:.3f} | | | | |")
    return "\n".join(lines)
