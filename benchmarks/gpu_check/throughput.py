"""Part 3: throughput and peak memory of (a) SparK, (b) the dense floor and (c) the naive reference.

ResNet-50 (batch 128) and ConvNeXt-B (batch 64) at 224 px, fp32 and bf16, channels_last off and on,
ResNet-50's bf16 rows also with the fused triton norm kernel for (a) when triton is installed, all
variants interleaved in this process (CUDA peak memory is per variant: the counter is reset
before each), so the ratios a/b and c/a come from one run under the same conditions. When bf16 a/b
exceeds 1.10 a torch.profiler table of (a) against (b) is written next to the results. First, in
seconds, the masked BatchNorm alone against the native one on ResNet-50's shapes in bf16 (the
largest share of (a)'s extra cost by the code's count). With ``--quick`` on a CPU the figures are
only a sign that the code path runs (one step, no warm-up)."""
import itertools
import json
import subprocess
import sys
import time
from typing import List, Tuple

from .failures import record_failure
from .options import CheckOptions
from ..process_output import last_line, run_child
from .results import PartResult

FULL = [("resnet50", 128), ("convnext_base", 64)]
QUICK = [("test_resnet", 2), ("test_convnext", 2)]
PROFILE_ABOVE = 1.10
COMPILE_NEEDS = 0.35  # the share of the part's limit that must be left to start compiling two models


def _settings(options: CheckOptions) -> Tuple[List[Tuple[str, int]], int, int, int, int]:
    """(models, size, warm-up steps, timed steps, rounds)."""
    # on an H200 5 warm-up and 15 timed steps in 2 rounds took about 50 s a row (profile included), so
    # only 3 of the 8 rows fitted the part; GPU step times vary little, 8 timed steps suffice
    return (QUICK, 64, 0, 1, 1) if options.quick else (FULL, 224, 3, 8, 2)


def run(options: CheckOptions, result: PartResult) -> None:
    from sparkmim.benchmarks.perf.compare import run_interleaved, summarise
    from sparkmim.benchmarks.perf.step import StepConfig

    models, size, warmup, steps, rounds = _settings(options)
    deadline = time.monotonic() + options.seconds * 0.8 if options.seconds else None
    _norm_alone(options, result)
    rows = ["| model | batch | precision | channels_last | norm kernel | (a) img/s | (b) img/s | (c) img/s | a/b | c/a "
            "| peak MiB (a) | (b) | (c) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table = len(result.tables)
    result.tables.append("\n".join(rows))
    # bf16 first, channels_last first: the precision and layout pre-training runs in on a GPU, so a part cut
    # short loses fp32 and contiguous rows, not those. One profile per model: on the H200 each cost about
    # as much as a row, and the first (default-layout) row over the threshold is the one that matters
    profiled, torch_rows, failed_kernels = set(), {}, set()
    for precision, channels_last, (model, batch), kernel in _row_order(models, options.norm_kernels):
        if deadline is not None and time.monotonic() > deadline:
            result.message = "stopped early to stay within the part's time limit; the rows above are complete"
            break
        if kernel in failed_kernels:
            continue
        config = StepConfig(model=model, batch=batch, size=size, precision=precision, device=options.device,
                            channels_last=channels_last, warmup=warmup, steps=steps, norm_kernel=kernel,
                            decoder_width=32 if options.quick else 768)
        # the triton rows measure (a) with the fused kernel against (b); (c) does not change with it
        names = ["spark", "dense", "naive"] if kernel == "torch" else ["spark", "dense"]
        key = f"{model} b{batch} {precision} cl={channels_last}" + ("" if kernel == "torch" else f" {kernel}")
        try:
            summary = summarise(run_interleaved(names, config, rounds, isolate=False))
        except Exception as error:  # noqa: BLE001 - recorded; the other rows are still measured
            record_failure(result, f"{key}: the steps run", error, options.torch_device)
            if kernel != "torch":  # its other rows would fail alike and cost the part their time
                failed_kernels.add(kernel)
            continue
        variants, ratios = summary["variants"], summary["ratios"]
        result.figures[key] = summary
        # in one process only the CUDA counter is per variant (CPU RSS growth is not)
        memory = [variants[v]["peak_memory_mib"] if options.cuda and v in variants else None
                  for v in ("spark", "dense", "naive")]
        rows.append(f"| {model} | {batch} | {precision} | {channels_last} | {kernel} | "
                    + " | ".join(f"{variants[v]['images_per_s']:.1f}" if v in variants else "n/a"
                                 for v in ("spark", "dense", "naive"))
                    + f" | {ratios['a/b']['median']:.3f} | "
                    + (f"{ratios['c/a']['median']:.3f}" if "c/a" in ratios else "n/a") + " | "
                    + " | ".join("n/a" if m is None else f"{m:.0f}" for m in memory) + " |")
        result.tables[table] = "\n".join(rows)
        result.record()  # a row survives the part being stopped later
        if kernel == "torch":
            torch_rows[(precision, channels_last, model)] = summary
        elif (precision, channels_last, model) in torch_rows:
            _compare_kernels(result, key, kernel, torch_rows[(precision, channels_last, model)], summary, options.cuda)
        over = precision == "bf16" and ratios["a/b"]["median"] > PROFILE_ABOVE
        if over and options.cuda and kernel == "torch" and model not in profiled:
            profiled.add(model)
            _profile(options, config, result, key)
    if options.cuda and not options.quick:
        left = options.seconds_left(margin=0, floor=0)
        if left is None or left >= COMPILE_NEEDS * options.seconds:
            _compiled(options, result)
        else:
            result.add("torch.compile, ResNet-50 bf16", None,
                       f"not run: {left:.0f} s of the part's {options.seconds:.0f} s left (compiling needs more)")


def _row_order(models: List[Tuple[str, int]], kernels: Tuple[str, ...]) -> List[Tuple[str, bool, Tuple[str, int], str]]:
    """(precision, channels_last, (model, batch), norm kernel) of each row, most wanted first: bf16 before
    fp32, channels_last before contiguous, and a bf16 row of a model with BatchNorm in its encoder followed by
    the same row with each other norm kernel (ConvNeXt's LayerNorms have no such kernel)."""
    order = []
    for precision, channels_last, (model, batch) in itertools.product(("bf16", "fp32"), (True, False), models):
        with_batchnorm = "resnet" in model  # of the models above, the ResNets have BatchNorms in the encoder
        for kernel in kernels if precision == "bf16" and with_batchnorm else kernels[:1]:
            order.append((precision, channels_last, (model, batch), kernel))
    return order


def _compare_kernels(result: PartResult, key: str, kernel: str, with_torch: dict, with_other: dict, cuda: bool) -> None:
    """One line for the default-kernel decision: (a) with ``kernel`` against (a) with the torch kernel, each
    as a/b against the (b) measured beside it, and (a)'s peak memory with each (CUDA only)."""
    before, after = with_torch["ratios"]["a/b"]["median"], with_other["ratios"]["a/b"]["median"]
    speed = with_other["variants"]["spark"]["images_per_s"] / with_torch["variants"]["spark"]["images_per_s"]
    memory = ""
    if cuda:
        peaks = [summary["variants"]["spark"]["peak_memory_mib"] for summary in (with_torch, with_other)]
        memory = f"; peak memory of (a) {peaks[0]:.0f} MiB -> {peaks[1]:.0f} MiB"
    result.add(f"{key}: the {kernel} norm kernel against the torch kernel", None,
               f"a/b {before:.3f} -> {after:.3f}; (a) {speed:.2f}x the images/s{memory}")


def _norm_alone(options: CheckOptions, result: PartResult) -> None:
    """``spark-bench norm --precision bf16`` at the throughput rows' ResNet-50 batch, with every norm kernel."""
    from sparkmim.benchmarks.perf.norm import RESNET50_SHAPES, format_norms, time_norms

    # --quick: two small shapes (Triton's interpreter, which runs the triton kernel on a CPU, is slow)
    batch, shapes, repeats = (2, ((64, 14), (256, 7)), 1) if options.quick else (128, RESNET50_SHAPES, 10)
    # with every kernel; should that fail (the fused kernel's first GPU run), again with the torch kernel alone
    for kernels in dict.fromkeys([options.norm_kernels, ("torch",)]):
        try:
            rows = time_norms(batch, shapes, repeats=repeats, device=options.device, precision="bf16", kernels=kernels)
        except Exception as error:  # noqa: BLE001 - recorded; the part goes on
            record_failure(result, f"the masked BatchNorm alone, bf16, {' and '.join(kernels)} kernels", error,
                           options.torch_device)
            continue
        result.figures["masked batchnorm alone, bf16"] = rows
        result.tables.append(format_norms(rows, batch, "bf16", kernels=kernels))
        result.record()
        return


def _profile(options: CheckOptions, config, result: PartResult, key: str) -> None:
    from sparkmim.benchmarks.perf.profiling import format_profile, profile_variants

    path = options.out_dir / f"profile_{key.replace(' ', '_').replace('=', '')}.md"
    path.write_text(format_profile(profile_variants(config, 3), top=25))
    result.add(f"{key}: a/b above {PROFILE_ABOVE}", None, f"profile of (a) against (b) in {path.name}")


def _compiled(options: CheckOptions, result: PartResult) -> None:
    """torch.compile for ResNet-50 bf16, (a) against (b) (``spark-bench paired --compile``), in a process of
    its own stopped with what is left of the part's limit: compiling may take longer than that, and then
    only this row is missing."""
    out = options.out_dir / "compiled_resnet50_bf16.json"
    command = [sys.executable, "-m", "sparkmim.benchmarks.cli", "paired", "--compile", "--model", "resnet50",
               "--batch", "128", "--size", "224", "--precision", "bf16", "--device", options.device,
               "--warmup", "3", "--rounds", "10", "--json", str(out)]
    tick = time.monotonic()
    try:
        done = run_child(command, timeout=options.seconds_left())
    except subprocess.TimeoutExpired:
        result.add("torch.compile, ResNet-50 bf16", None,
                   f"not finished in the {time.monotonic() - tick:.0f} s left of the part (compilation included)")
        return
    if done.returncode != 0:
        result.add("torch.compile, ResNet-50 bf16: (a) and (b) compile and run", False,
                   f"exit {done.returncode}: {last_line(done.stderr)}")
        return
    result.figures["resnet50 b128 bf16 compiled"] = json.loads(out.read_text())["summary"]
    result.tables.append(f"torch.compile, ResNet-50 bf16 batch 128 ({time.monotonic() - tick:.0f} s with compilation):"
                         f"\n\n{done.stdout.strip()}")
    result.add("torch.compile, ResNet-50 bf16: (a) and (b) compile and run", True, "paired a/b in the table above")
