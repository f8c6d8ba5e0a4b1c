"""Run the step benchmark for several variants, interleaved and repeated, and summarise it.

Why interleaved: on a shared or thermally throttled machine the speed drifts over minutes; running
a, b, c one after the other within each repeat (rotating the order) and taking ratios per repeat
makes a/b and c/a robust to that drift. Each run goes to a fresh Python process by default, so peak
memory is that variant's alone and no allocator cache carries over.
"""
import json
import logging
import statistics
import sys
from dataclasses import asdict
from typing import Any, Dict, List, Sequence

from ..process_output import last_line, run_child
from .step import VARIANTS, StepConfig, describe_config, measure, summarised_variants

logger = logging.getLogger(__name__)

WORKER_MARK = "SPARK_BENCH_RESULT "


def run_isolated(variant: str, config: StepConfig) -> Dict[str, Any]:
    """Measure one variant in a fresh Python process (``spark-bench worker``)."""
    command = [sys.executable, "-m", "sparkmim.benchmarks.cli", "worker", "--variant", variant,
               "--config-json", json.dumps(asdict(config))]
    done = run_child(command)
    for line in done.stdout.splitlines():
        if line.startswith(WORKER_MARK):
            return json.loads(line[len(WORKER_MARK):])
    raise RuntimeError(f"benchmark worker for '{variant}' failed (exit {done.returncode}): {last_line(done.stderr)}")


def run_interleaved(variants: Sequence[str], config: StepConfig, repeats: int,
                    isolate: bool = True) -> List[Dict[str, Any]]:
    """All runs, repeat by repeat; the variant order rotates by one each repeat."""
    results = []
    for repeat in range(repeats):
        order = list(variants[repeat % len(variants):]) + list(variants[:repeat % len(variants)])
        for variant in order:
            result = run_isolated(variant, config) if isolate else measure(variant, config)
            result["repeat"] = repeat
            logger.info("repeat %d/%d %s: median %.4f s", repeat + 1, repeats, variant, result["median_s"])
            results.append(result)
    return results


def _spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per variant: spread over repeats of the per-run median step time, the fastest single step
    (the least disturbed one on a shared machine), images/s and peak memory; ratios a/b and c/a
    computed within each repeat, then their spread, and the ratios of the fastest steps."""
    by_variant: Dict[str, List[Dict[str, Any]]] = {}
    for result in results:
        by_variant.setdefault(result["variant"], []).append(result)
    batch = results[0]["config"]["batch"]
    summary: Dict[str, Any] = {"variants": {}, "ratios": {}}
    for variant, runs in by_variant.items():
        medians = [run["median_s"] for run in runs]
        memory = [run["peak_memory_mib"] for run in runs if run["peak_memory_mib"] is not None]
        summary["variants"][variant] = {
            "label": VARIANTS[variant], "step_s": _spread(medians),
            "fastest_step_s": min(t for run in runs for t in run["step_times_s"]),
            "images_per_s": batch / statistics.median(medians),
            "peak_memory_mib": statistics.median(memory) if memory else None,
            "memory_kind": runs[0]["memory_kind"]}
    per_repeat: Dict[int, Dict[str, float]] = {}
    for result in results:
        per_repeat.setdefault(result["repeat"], {})[result["variant"]] = result["median_s"]
    for name, top, bottom in (("a/b", "spark", "dense"), ("c/a", "naive", "spark")):
        values = [times[top] / times[bottom] for times in per_repeat.values() if top in times and bottom in times]
        if values:
            summary["ratios"][name] = _spread(values)
    fastest = {v: s["fastest_step_s"] for v, s in summary["variants"].items()}
    for name, top, bottom in (("a/b fastest steps", "spark", "dense"), ("c/a fastest steps", "naive", "spark")):
        if top in fastest and bottom in fastest:
            summary["ratios"][name] = {"median": fastest[top] / fastest[bottom]}
    memory = {v: s["peak_memory_mib"] for v, s in summary["variants"].items()}
    if memory.get("spark") and memory.get("dense"):
        summary["ratios"]["memory a/b"] = {"median": memory["spark"] / memory["dense"]}
    return summary


def format_table(summary: Dict[str, Any], config: StepConfig) -> str:
    """A Markdown table of the summary (what ``spark-bench step`` prints)."""
    lines = [f"{describe_config(config, config.threads or 'default')}, {config.warmup} warm-up + {config.steps} "
             "timed steps per run",
             "",
             "| variant | step time: median of run medians [min, max] (s) | fastest step (s) | images/s (from median) "
             "| peak memory (MiB) | runs |",
             "|---|---|---|---|---|---|"]
    for title, stats in summarised_variants(summary):
        step = stats["step_s"]
        memory = f"{stats['peak_memory_mib']:.0f}" if stats["peak_memory_mib"] is not None else "n/a"
        lines.append(f"| {title} | {step['median']:.3f} [{step['min']:.3f}, {step['max']:.3f}] | "
                     f"{stats['fastest_step_s']:.3f} | {stats['images_per_s']:.2f} | {memory} | {step['n']} |")
    lines += ["", "| ratio | median | min | max |", "|---|---|---|---|"]
    for name, stats in summary["ratios"].items():
        if "min" in stats:
            lines.append(f"| {name} | {stats['median']:.3f} | {stats['min']:.3f} | {stats['max']:.3f} |")
        else:
            lines.append(f"| {name} | {stats['median']:.3f} | | |")
    return "\n".join(lines)
