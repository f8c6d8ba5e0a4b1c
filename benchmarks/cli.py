"""spark-bench: how fast is sparkmim's SparK next to the dense network and a naive masked reference?

Subcommands::

    spark-bench step     time a full training step of (a) sparkmim SparK, (b) the dense floor and
                         (c) the naive reference, interleaved and repeated; prints images/s, median
                         step time, peak memory and the ratios a/b and c/a
    spark-bench paired   the same variants in one process, steps alternating: per-round ratios that
                         hold on a machine shared with other jobs (no memory figures)
    spark-bench sync     the ops of one training step that synchronise host and device (any device;
                         on CUDA also torch.cuda.set_sync_debug_mode('error')); exit 1 if (a) has any
    spark-bench profile  torch.profiler of (a) against (b): where the extra time of (a) goes
    spark-bench e2e      end-to-end images/s of spark-pretrain on a folder of JPEGs, and whether
                         loading or compute bounds it; --shards: the loader on the same images in tar shards
    spark-bench norm     the masked BatchNorm alone against the native one (ResNet-50 shapes)
    spark-bench activations  bytes autograd saves for backward per image, (a) with each norm kernel,
                         (b) and (c): the activation-memory part of peak memory, measured on any device
    spark-bench value    what SparK pre-training buys downstream: SparK vs scratch on real data
                         (kNN, linear probe, fine-tuning on label subsets); see docs/value.md
    spark-bench kill-trials  SIGKILL spark-pretrain or spark-finetune at random moments, resume, and count
                         corrupt checkpoints, failed resumes, duplicated or missing metric rows and
                         summaries that differ from an uninterrupted run (all expected 0)
    spark-bench coverage  every timm family through SparK (build, a training step, the invariants), a
                         table of what works and why the rest is refused; see docs/coverage.md
    spark-bench gpu-check  one prepared run of everything the CPU cannot check (CUDA correctness, no
                         host-device syncs, throughput and memory, data path, DDP, spark-finetune); --device cpu
                         --quick runs every part's code path on tiny sizes

See docs/benchmarks.md for the measured tables and exact commands.
"""
import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from sparkmim.sparse.norms import NORM_KERNELS
from sparkmim.utils.config import check_number_ranges
from sparkmim.utils.distributed import check_cuda_visible, check_device_name
from sparkmim.utils.errors import run_command
from sparkmim.utils.logging_setup import setup_command_logging
from sparkmim.utils.output_paths import check_output_file, check_output_folder

from .gpu_check.part import PARTS as GPU_CHECK_PARTS
from .perf.step import PRECISIONS, VARIANTS, StepConfig

logger = logging.getLogger(__name__)


def _add_step_options(parser: argparse.ArgumentParser) -> None:
    defaults = StepConfig()
    parser.add_argument("--model", default=defaults.model, help="timm model name (default: resnet50)")
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--size", type=int, default=defaults.size, help="input resolution in pixels")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default=defaults.precision)
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--norm-kernel", choices=NORM_KERNELS, default=defaults.norm_kernel,
                        help="SparK's masked BatchNorm kernel in training (triton: fused, CUDA only)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps per run")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="timed steps per run")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--decoder-width", type=int, default=defaults.decoder_width)
    parser.add_argument("--drop-path", type=float, default=defaults.drop_path)
    parser.add_argument("--seed", type=int, default=defaults.seed)


def _step_config(args: argparse.Namespace) -> StepConfig:
    return StepConfig(model=args.model, batch=args.batch, size=args.size, precision=args.precision,
                      device=args.device, channels_last=args.channels_last, compile=args.compile,
                      warmup=args.warmup, steps=args.steps, threads=args.threads, seed=args.seed,
                      decoder_width=args.decoder_width, drop_path=args.drop_path, norm_kernel=args.norm_kernel)


def _variants(text: str) -> List[str]:
    aliases = {label: name for name, label in VARIANTS.items()}
    chosen = [aliases.get(part.strip(), part.strip()) for part in text.split(",") if part.strip()]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; use a,b,c or spark,dense,naive")
    return chosen


def _parts(text: str) -> List[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in chosen if part not in GPU_CHECK_PARTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown part(s) {unknown}; choose from {','.join(GPU_CHECK_PARTS)}")
    return [part for part in GPU_CHECK_PARTS if part in chosen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spark-bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # listed here for --help only: main() hands 'value' to its own parser before this one runs
    sub.add_parser("value", add_help=False,
                   help="does SparK pre-training make a downstream model better? (options: spark-bench value --help)")

    step = sub.add_parser("step", help="time a training step of a, b, c (interleaved, repeated)")
    _add_step_options(step)
    step.add_argument("--variants", type=_variants, default=list(VARIANTS), help="subset, e.g. a,b (default a,b,c)")
    step.add_argument("--repeats", type=int, default=3, help="interleaved rounds over the variants")
    step.add_argument("--in-process", action="store_true",
                      help="run every variant in this process (faster start; CPU peak memory then reads n/a)")
    step.add_argument("--json", type=Path, default=None, help="also write all runs and the summary here")

    paired = sub.add_parser("paired", help="a/b (and c/a) from alternating steps in one process")
    _add_step_options(paired)
    paired.add_argument("--variants", type=_variants, default=["spark", "dense"], help="subset (default a,b)")
    paired.add_argument("--rounds", type=int, default=10, help="alternating rounds (one step of each variant)")
    paired.add_argument("--json", type=Path, default=None)

    sync = sub.add_parser("sync", help="host-device synchronisations in one training step of a, b, c")
    _add_step_options(sync)
    sync.add_argument("--variants", type=_variants, default=list(VARIANTS), help="subset (default a,b,c)")
    sync.add_argument("--json", type=Path, default=None)

    profile = sub.add_parser("profile", help="torch.profiler of (a) against (b)")
    _add_step_options(profile)
    profile.add_argument("--profile-steps", type=int, default=3, help="profiled steps per variant")
    profile.add_argument("--top", type=int, default=20, help="rows per table")
    profile.add_argument("--json", type=Path, default=None)

    e2e = sub.add_parser("e2e", help="spark-pretrain end to end on a folder of JPEGs")
    e2e.add_argument("--data", type=Path, default=None,
                     help="folder of images (default: generate --num-images JPEGs into --work-dir)")
    e2e.add_argument("--work-dir", type=Path, required=True, help="where generated images and the run go")
    e2e.add_argument("--num-images", type=int, default=64)
    e2e.add_argument("--image-size", type=int, default=320, help="side of the generated JPEGs")
    e2e.add_argument("--model", default="resnet50")
    e2e.add_argument("--size", type=int, default=224)
    e2e.add_argument("--batch", type=int, default=8)
    e2e.add_argument("--workers", type=int, default=2)
    e2e.add_argument("--device", default="cpu")
    e2e.add_argument("--threads", type=int, default=None)
    e2e.add_argument("--warmup", type=int, default=2, help="steps left out of the end-to-end rate")
    e2e.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                     help="of the training step (bf16: spark-pretrain --amp bf16)")
    e2e.add_argument("--channels-last", action="store_true", help="the step and spark-pretrain in channels_last")
    e2e.add_argument("--decode-on-device", action="store_true",
                     help="also time the loader with JPEG decoding on --device, and run spark-pretrain with it")
    e2e.add_argument("--loader-only", action="store_true", help="time the loader(s) only: no model, no run")
    e2e.add_argument("--shards", action="store_true",
                     help="also pack the images into tar shards (spark-data pack) and time the shard loader alone")
    e2e.add_argument("--shard-size", type=int, default=1000, help="images per shard with --shards")
    e2e.add_argument("--repeats", type=int, default=1, help="loader timings, alternating folder and shards (median)")
    e2e.add_argument("--cold-cache", action="store_true",
                     help="drop the page cache before each loader timing, so files come from the disk (Linux, root)")
    e2e.add_argument("--json", type=Path, default=None)

    saved = sub.add_parser("activations", help="what autograd saves for backward per image: a, b, c, each norm kernel")
    _add_step_options(saved)
    saved.add_argument("--kernels", nargs="+", choices=NORM_KERNELS, default=list(NORM_KERNELS),
                       help="norm kernels for (a) (default both; triton off CUDA runs through TRITON_INTERPRET=1)")
    saved.add_argument("--json", type=Path, default=None)

    norm = sub.add_parser("norm", help="masked vs native BatchNorm, forward+backward, ResNet-50 shapes")
    norm.add_argument("--batch", type=int, default=8)
    norm.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                      help="bf16: bf16 input and gradient under autocast, as in a bf16 training step")
    norm.add_argument("--device", default="cpu")
    norm.add_argument("--threads", type=int, default=None)
    norm.add_argument("--repeats", type=int, default=10)
    norm.add_argument("--kernels", nargs="+", choices=NORM_KERNELS, default=["torch"],
                      help="masked BatchNorm kernels to time, each against native (triton: CUDA only)")
    norm.add_argument("--json", type=Path, default=None)

    gpu = sub.add_parser("gpu-check", help="the GPU validation run (parts 1-7, results after each part)")
    gpu.add_argument("--out", type=Path, required=True, help="folder for results.json, summary.md and the parts' files")
    gpu.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    gpu.add_argument("--quick", action="store_true", help="tiny sizes: every part's code path in minutes (CI)")
    gpu.add_argument("--parts", type=_parts, default=list(GPU_CHECK_PARTS),
                     help=f"comma-separated subset of {','.join(GPU_CHECK_PARTS)}")
    gpu.add_argument("--budget-s", type=float, default=None,
                     help="stop starting parts once this many seconds are used (default: 480 on a GPU, none with --quick)")
    gpu.add_argument("--fixtures", type=Path, default=None,
                     help="reference-parity fixtures (default: tests/fixtures/reference of the source tree)")
    gpu.add_argument("--value-data", default=None, help="data for part 7 (default: the installed Fashion-MNIST)")
    gpu.add_argument("--norm-kernels", nargs="+", choices=NORM_KERNELS, default=None,
                     help="the sparse BatchNorm kernels to check and time, torch first (default: torch, and triton "
                          "where it runs); 'torch' alone leaves the fused kernel out of a rerun")
    gpu.add_argument("--keep-scratch", action="store_true",
                     help="keep OUT/scratch (generated images, run folders, checkpoints: gigabytes on a GPU), "
                          "deleted after each part by default")

    coverage = sub.add_parser("coverage", help="every timm family: works, or refused and why (docs/coverage.md)")
    coverage.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    coverage.add_argument("--json", type=Path, default=None)
    coverage.add_argument("--families", type=lambda text: [f for f in text.split(",") if f], default=None,
                          help="comma-separated timm modules (default: all of them)")
    coverage.add_argument("--jobs", type=int, default=2, help="models tried at once (one process each)")
    coverage.add_argument("--tries", type=int, default=2, help="smallest members tried per family until one works")
    coverage.add_argument("--timeout-s", type=float, default=300.0, help="time limit per model")

    kills = sub.add_parser("kill-trials", help="random SIGKILLs then --resume auto, against an uninterrupted run")
    kills.add_argument("--work-dir", type=Path, required=True, help="where the data, the runs and the logs go")
    kills.add_argument("--trainer", choices=["pretrain", "finetune"], default="pretrain")
    kills.add_argument("--trials", type=int, default=12)
    kills.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    kills.add_argument("--json", type=Path, default=None)

    # the internal process of 'step': without a help text argparse leaves it out of the command list
    # (help=SUPPRESS printed "==SUPPRESS==" there), and the metavar leaves it out of the usage line
    worker = sub.add_parser("worker")
    worker.add_argument("--variant", required=True, choices=list(VARIANTS))
    worker.add_argument("--config-json", required=True)
    sub.metavar = "{" + ",".join(name for name in sub.choices if name != "worker") + "}"
    return parser


def _write_json(path: Optional[Path], payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))


def _run_step(args: argparse.Namespace) -> int:
    from .perf.compare import format_table, run_interleaved, summarise
    config = _step_config(args)
    results = run_interleaved(args.variants, config, args.repeats, isolate=not args.in_process)
    summary = summarise(results)
    print(format_table(summary, config))
    _write_json(args.json, {"summary": summary, "runs": results})
    return 0


def _run_paired(args: argparse.Namespace) -> int:
    from .perf.paired import format_paired, measure_paired
    config = _step_config(args)
    report = measure_paired(args.variants, config, args.rounds)
    print(format_paired(report, config))
    _write_json(args.json, report)
    return 0


def _run_sync(args: argparse.Namespace) -> int:
    import torch

    from .perf.step import VARIANT_TITLES, check_run_settings, describe_config
    from .perf.sync_check import step_sync_report
    config = _step_config(args)
    check_run_settings(config)
    reports = [step_sync_report(variant, config) for variant in args.variants]
    print(f"host-device synchronisations in one training step (forward, backward, LAMB step): "
          f"{describe_config(config, torch.get_num_threads())}\n")
    print("| variant | syncing ops (count per step) | CUDA sync debug mode 'error' |\n|---|---|---|")
    for report in reports:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(report["syncing_ops"].items())) or "none"
        cuda = ("passes" if report.get("cuda_sync_debug_error") is None else report["cuda_sync_debug_error"]) \
            if "cuda_sync_debug_error" in report else "n/a (not CUDA)"
        print(f"| {VARIANT_TITLES[report['variant']]} | {ops} | {cuda} |")
    _write_json(args.json, {"config": vars(args) | {"variants": args.variants, "json": None}, "reports": reports})
    spark = next((r for r in reports if r["variant"] == "spark"), None)
    return 1 if spark is not None and (spark["syncing_ops"] or spark.get("cuda_sync_debug_error")) else 0


def _run_profile(args: argparse.Namespace) -> int:
    from .perf.profiling import format_profile, profile_variants
    config = _step_config(args)
    report = profile_variants(config, args.profile_steps)
    print(format_profile(report, args.top))
    _write_json(args.json, report)
    return 0


def _run_e2e(args: argparse.Namespace) -> int:
    from .perf.e2e import E2EConfig, format_e2e, run_e2e
    config = E2EConfig(data=args.data, work_dir=args.work_dir, num_images=args.num_images,
                       image_size=args.image_size, model=args.model, size=args.size, batch=args.batch,
                       workers=args.workers, device=args.device, threads=args.threads, warmup=args.warmup,
                       decode_on_device=args.decode_on_device, precision=args.precision,
                       channels_last=args.channels_last, loader_only=args.loader_only, shards=args.shards,
                       shard_size=args.shard_size, repeats=args.repeats, cold_cache=args.cold_cache)
    report = run_e2e(config)
    print(format_e2e(report))
    _write_json(args.json, report)
    return 0


def _run_activations(args: argparse.Namespace) -> int:
    from .perf.activations import format_saved, measure_saved
    config = _step_config(args)
    runs = [("spark", kernel) for kernel in args.kernels] + [("dense", "torch"), ("naive", "torch")]
    rows = measure_saved(config, runs)
    print(format_saved(rows, config))
    _write_json(args.json, {"config": config.__dict__, "rows": rows})
    return 0


def _run_norm(args: argparse.Namespace) -> int:
    import torch

    from .perf.norm import RESNET50_SHAPES, format_norms, time_norms
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = time_norms(args.batch, RESNET50_SHAPES, repeats=args.repeats, device=args.device, precision=args.precision,
                      kernels=args.kernels)
    print(format_norms(rows, args.batch, args.precision, kernels=args.kernels))
    _write_json(args.json, {"batch": args.batch, "device": args.device, "precision": args.precision,
                            "kernels": args.kernels, "rows": rows})
    return 0


def _gpu_check_kernels(kernels: Optional[List[str]], device: str) -> Optional[Tuple[str, ...]]:
    """``--norm-kernels`` checked: torch first (every comparison is against it), each able to run on ``device``."""
    import torch

    from sparkmim.sparse.norms import check_norm_kernel
    if kernels is None:
        return None
    if kernels[0] != "torch":
        raise ValueError("--norm-kernels must start with torch, the default kernel the others are compared with")
    for kernel in kernels:
        check_norm_kernel(kernel, torch.device(device))
    return tuple(dict.fromkeys(kernels))


def _run_gpu_check(args: argparse.Namespace) -> int:
    from .gpu_check.options import CheckOptions
    from .gpu_check.runner import default_fixtures, exit_status, run_gpu_check
    fixtures = args.fixtures or default_fixtures()
    options = CheckOptions(out=str(args.out), device=args.device, quick=args.quick,
                           fixtures=str(fixtures) if fixtures else None, value_data=args.value_data,
                           keep_scratch=args.keep_scratch, kernels=_gpu_check_kernels(args.norm_kernels, args.device))
    budget = args.budget_s if args.budget_s is not None else (None if args.quick else 480.0)
    results = run_gpu_check(options, args.parts, budget)
    print((args.out / "summary.md").read_text())
    return exit_status(results)


def _run_kill_trials(args: argparse.Namespace) -> int:
    from .faults.kill_trials import TrialConfig, all_clean, format_kill_trials, run_kill_trials
    report = run_kill_trials(TrialConfig(work_dir=args.work_dir, trainer=args.trainer, trials=args.trials,
                                         seed=args.seed))
    print(format_kill_trials(report))
    _write_json(args.json, report)
    return 0 if all_clean(report) else 1


def _run_coverage(args: argparse.Namespace) -> int:
    from .coverage.report import format_markdown, summary
    from .coverage.survey import run_survey
    outcomes = run_survey(args.families, jobs=args.jobs, tries=args.tries, timeout_s=args.timeout_s)
    command = "spark-bench coverage" + (f" --families {','.join(args.families)}" if args.families else "") + \
        (f" --out {args.out}" if args.out else "") + (f" --json {args.json}" if args.json else "") + \
        f" --jobs {args.jobs} --tries {args.tries}"
    table = format_markdown(outcomes, command)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    _write_json(args.json, {"summary": summary(outcomes), "families": [o.to_dict() for o in outcomes]})
    return 1 if summary(outcomes)["crashes"] else 0


def _run_worker(args: argparse.Namespace) -> int:
    from .perf.compare import WORKER_MARK
    from .perf.step import measure
    known = {f.name for f in fields(StepConfig)}
    config = StepConfig(**{k: v for k, v in json.loads(args.config_json).items() if k in known})
    print(WORKER_MARK + json.dumps(measure(args.variant, config)), flush=True)
    return 0


def _check_device(args: argparse.Namespace) -> None:
    """A misspelt device, or CUDA on a machine without it, is refused before any worker or part starts
    (it surfaced as torch's driver message relayed by a failed worker); 'auto' becomes the device it means."""
    import torch

    device = getattr(args, "device", None)
    if device is None:
        return
    check_device_name(device, ValueError)
    if device == "auto":  # as in the trainers; the measurements record the device they ran on
        args.device = device = "cuda" if torch.cuda.is_available() else "cpu"
    hint = " --quick for gpu-check's CPU code path" if args.command == "gpu-check" else ""
    check_cuda_visible(device, ValueError, hint)


def _check_output_paths(args: argparse.Namespace) -> None:
    """``--json``, ``--out`` and ``--work-dir`` checked before anything is measured: a folder given as the
    JSON file ended minutes of timing with a traceback, and a file given as gpu-check's folder did at once."""
    folders = {"work_dir"} | ({"out"} if args.command == "gpu-check" else set())
    for name in ("out", "json", "work_dir"):
        path = getattr(args, name, None)
        if path is None:
            continue
        option = "--" + name.replace("_", "-")
        if name in folders:
            check_output_folder(path, option)
        else:
            check_output_file(path, option, example="coverage.md" if name == "out" else "results.json")


# counts and sizes every subcommand that has them needs above 0 (0 crashed with SIGFPE, a ZeroDivisionError or
# an empty median, or passed as "clean" with nothing run); --warmup and --workers may be 0 (--rounds has a check
# of its own)
POSITIVE_OPTIONS = ("batch", "size", "image_size", "num_images", "steps", "repeats", "profile_steps", "top",
                    "threads", "jobs", "tries", "timeout_s", "trials", "budget_s")
NON_NEGATIVE_OPTIONS = ("warmup", "workers")


def _check_counts(args: argparse.Namespace) -> None:
    given = vars(args)
    check_number_ranges(given, positive=[key for key in POSITIVE_OPTIONS if key in given],
                        non_negative=[key for key in NON_NEGATIVE_OPTIONS if key in given])
    fixtures = given.get("fixtures")
    if fixtures is not None and not Path(fixtures).is_dir():  # the parity check would read n/a, not fail
        raise ValueError(f"--fixtures {fixtures}: folder not found (the reference-parity fixtures)")


def _dispatch(args: argparse.Namespace, handler: Callable[[argparse.Namespace], int]) -> int:
    if args.command != "worker":
        _check_counts(args)
        _check_device(args)
        _check_output_paths(args)
    return handler(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["value"]:  # its own parser and logging (a whole protocol, not a timing)
        from .value.cli import main as value_main
        return value_main(argv[1:])
    setup_command_logging(logging.INFO, fmt="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    handlers = {"step": _run_step, "paired": _run_paired, "sync": _run_sync, "profile": _run_profile, "e2e": _run_e2e,
                "norm": _run_norm, "activations": _run_activations, "gpu-check": _run_gpu_check, "kill-trials": _run_kill_trials,
                "coverage": _run_coverage,
                "worker": _run_worker}
    # a measurement that cannot run (unknown model, no CUDA, bad sizes) is one line, not a traceback
    return run_command("spark-bench", lambda: _dispatch(args, handlers[args.command]),
                       statuses={ValueError: 2, RuntimeError: 2})


if __name__ == "__main__":
    sys.exit(main())
