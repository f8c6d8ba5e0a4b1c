"""End-to-end images/s of spark-pretrain on a folder of JPEGs, and what bounds it.

Three measurements with the same model, batch and resolution:

1. loader alone: spark-pretrain's own dataset, batch sampler and DataLoader (decode, random resized
   crop, flip, normalise) iterated without a model; with ``decode_on_device`` also the device-decoding
   path (workers read bytes and draw crops; decode, resize and normalise on ``device``, which on a CPU
   device happens in the measuring process), and the end-to-end run then uses that path;
2. step alone: the training step of sparkmim's SparK on synthetic images (:mod:`.step`);
3. end to end: the real ``spark-pretrain`` command for one epoch, its per-step rate read from the
   run's metrics.jsonl (each logged step includes fetching its batch).

If the loader alone is slower than the step alone, loading bounds training; if it is faster and the
end-to-end rate is close to the step alone, compute does. In between, both compete for the same
CPU cores (the usual case on a small CPU machine).
"""
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch

from ..process_output import last_line, run_child

logger = logging.getLogger(__name__)

CLOSE = 0.15  # relative gap under which two rates count as the same


@dataclass
class E2EConfig:
    work_dir: Path
    data: Optional[Path] = None
    num_images: int = 64
    image_size: int = 320
    model: str = "resnet50"
    size: int = 224
    batch: int = 8
    workers: int = 2
    device: str = "cpu"
    threads: Optional[int] = None
    warmup: int = 2
    seed: int = 0
    decode_on_device: bool = False
    precision: str = "fp32"     # fp32 | bf16 (spark-pretrain --amp bf16), the step alone the same
    channels_last: bool = False  # given to spark-pretrain either way, so both measure one layout
    loader_only: bool = False   # measure 1. only (no model: cheap, and enough to compare loading paths)
    shards: bool = False        # also pack the images into tar shards and time the shard loader alone
    shard_size: int = 1000
    repeats: int = 1            # loader timings alternate folder and shards this many times (median kept)
    cold_cache: bool = False    # drop the page cache before each loader timing (Linux, root): data read from disk


def make_jpeg_folder(folder: Path, count: int, size: int, seed: int = 0) -> List[Path]:
    """``count`` JPEGs of ``size`` x ``size`` (spark-pretrain's procedural demo pictures), made once."""
    from sparkmim.utils.synthetic import scene as render_image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"img_{index:05d}.jpg"
        image = render_image(rng, size)
        if not path.exists():
            image.save(path, quality=90)
        paths.append(path)
    return paths


def time_loader(paths: List[Path], config: E2EConfig, batches: int, decode_on_device: bool = False) -> Dict[str, Any]:
    """Images/s of spark-pretrain's data pipeline alone (the first batch, with worker start-up, excluded).

    With ``decode_on_device`` each batch also goes through the device decoder, as in training, so the
    rate is that of finished (B, 3, H, W) images on ``config.device``."""
    from torch.utils.data import DataLoader

    from sparkmim.pretrain.data import PretrainImages, StepBatchSampler, collate
    from sparkmim.pretrain.device_decode import DeviceDecoder, EncodedImages, collate_encoded
    size = (config.size, config.size)
    device = torch.device(config.device)
    sampler = StepBatchSampler(len(paths), config.batch, config.batch, rank=0, world_size=1, seed=config.seed)
    if decode_on_device:
        dataset = EncodedImages(paths, size, config.seed)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=config.workers, collate_fn=collate_encoded)
        prepare = DeviceDecoder(dataset, config.device)
    else:
        loader = DataLoader(PretrainImages(paths, size, config.seed), batch_sampler=sampler,
                            num_workers=config.workers, collate_fn=collate,
                            pin_memory=device.type == "cuda")  # as spark-pretrain's
        prepare = None
    return {"images_per_s": images_per_s(loader, prepare, device, batches, config.batch), "batches": batches,
            "workers": config.workers, "decode_on_device": decode_on_device, "path": decode_path(device, decode_on_device)}


def images_per_s(loader: Iterable, prepare: Optional[Callable[[Any], Any]], device: torch.device, batches: int,
                 batch: int) -> float:
    """The rate of finished images out of ``loader`` (through ``prepare``, the device decoder, when given) over
    ``batches`` batches after the first, which pays for the workers' start-up. On a GPU, images decoded on
    the CPU are copied to it as in training (pinned, non-blocking), so the rate includes that copy."""
    iterator = iter(loader)

    def fetch() -> None:
        loaded = next(iterator)
        if prepare is not None:
            prepare(loaded)
        elif device.type == "cuda":
            loaded[0].to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fetch()
    tick = time.perf_counter()
    for _ in range(batches):
        fetch()
    elapsed = time.perf_counter() - tick
    del iterator
    return batches * batch / elapsed


def decode_path(device: torch.device, decode_on_device: bool) -> str:
    return f"JPEG decode on {device.type} (decode_jpeg)" if decode_on_device else "PIL decode in workers"


def time_shard_loader(shard_folder: Path, config: E2EConfig, batches: int, decode_on_device: bool = False
                      ) -> Dict[str, Any]:
    """Images/s of spark-pretrain's shard pipeline alone: the same decode and augmentation as the folder's,
    reading the samples from tar shards through one stream per worker (the first batch excluded); with
    ``decode_on_device``, finished images from the device decoder, as in training."""
    from sparkmim.pretrain.shard_stream import StreamLayout, shard_loader
    from sparkmim.utils.shards import resolve_shards
    shards = resolve_shards(str(shard_folder))
    steps_per_epoch = max(1, -(-shards.num_samples // config.batch))
    layout = StreamLayout(steps_per_epoch, 1, config.batch, rank=0, world_size=1, workers=max(1, config.workers))
    device = torch.device(config.device)
    loader, prepare = shard_loader(shards, layout, (config.size, config.size), config.seed, None, 1000,
                                   config.workers, device, decode_on_device)
    return {"images_per_s": images_per_s(loader, prepare, device, batches, config.batch), "batches": batches,
            "workers": config.workers, "decode_on_device": decode_on_device,
            "path": f"tar shards ({len(shards.urls)}, up to {config.shard_size} images each), "
                    f"{decode_path(device, decode_on_device)}"}


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> None:
    """Write dirty pages out and drop the page cache, so the next read comes from the disk (Linux, root)."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as error:
        raise ValueError(f"--cold-cache needs write access to {DROP_CACHES} (Linux, as root): {error}") from error


def time_reading(paths: List[Path], shard_folder: Optional[Path]) -> Dict[str, Any]:
    """Images/s of reading the bytes alone, in one process, without decoding: every file opened and read in
    the loader's order, or (``shard_folder``) the same images streamed out of their shards. What the file
    system costs, apart from decoding."""
    tick = time.perf_counter()
    if shard_folder is None:
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(0)).tolist()
        count = sum(1 for index in order if paths[index].read_bytes())
        path = "folder: open and read each file (random order)"
    else:
        from sparkmim.utils.shards import iter_raw_samples, resolve_shards
        count = sum(1 for _ in iter_raw_samples(resolve_shards(str(shard_folder)).urls, lambda error: None))
        path = "tar shards: stream each shard"
    return {"images_per_s": count / (time.perf_counter() - tick), "path": path}


def pack_for_benchmark(paths: List[Path], config: E2EConfig) -> Dict[str, Any]:
    """The images packed once into ``work_dir/shards`` (replacing an earlier pack); seconds taken."""
    from sparkmim.tools.data import pack_shards
    tick = time.perf_counter()
    result = pack_shards(paths, config.work_dir / "shards", shard_size=config.shard_size, overwrite=True)
    return {"folder": str(result.folder), "shards": len(result.counts), "seconds": time.perf_counter() - tick,
            "images_per_s": sum(result.counts.values()) / max(time.perf_counter() - tick, 1e-9)}


def median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The run with the median rate (the lower one of an even count), with every rate kept beside it."""
    ordered = sorted(runs, key=lambda run: run["images_per_s"])
    return {**ordered[(len(ordered) - 1) // 2], "all_images_per_s": [run["images_per_s"] for run in runs]}


def time_step(config: E2EConfig, steps: int) -> Dict[str, Any]:
    """Images/s of the SparK training step alone (synthetic images already on the device).

    Measured in a separate process: memory this process kept after an in-process measurement
    (glibc does not hand it back) left the spark-pretrain run that follows short of free pages,
    and on a machine whose free memory is mostly page cache that made its steps ~30% slower."""
    from .compare import run_isolated
    from .step import StepConfig
    result = run_isolated("spark", StepConfig(model=config.model, batch=config.batch, size=config.size,
                                         device=config.device, threads=config.threads, warmup=config.warmup,
                                         steps=steps, seed=config.seed, precision=config.precision,
                                         channels_last=config.channels_last))
    return {"images_per_s": result["images_per_s"], "median_s": result["median_s"], "steps": steps}


def run_pretrain(data: Path, config: E2EConfig, epochs: int = 1) -> Dict[str, Any]:
    """Run ``spark-pretrain`` for ``epochs`` and read its per-step rate from metrics.jsonl."""
    run_dir = config.work_dir / ("run_decode_on_device" if config.decode_on_device else "run")
    if run_dir.exists():  # a run of an earlier benchmark would append to its metrics (or be resumed)
        shutil.rmtree(run_dir)
    command = [sys.executable, "-m", "sparkmim.pretrain", "--data", str(data), "--model", config.model,
               "--input-size", str(config.size), "--batch-size", str(config.batch), "--epochs", str(epochs),
               "--warmup-epochs", "0", "--workers", str(config.workers), "--device", config.device,
               "--output-dir", str(run_dir), "--no-progress", "--no-tensorboard", "--seed", str(config.seed),
               # rates are per log interval: the first interval is exactly the warm-up steps left out below
               "--log-interval", str(max(1, config.warmup)),
               "--amp", "bf16" if config.precision == "bf16" else "off",
               "--channels-last" if config.channels_last else "--no-channels-last"]
    if config.decode_on_device:
        command.append("--decode-on-device")
    env = dict(os.environ)
    if config.threads:
        env["OMP_NUM_THREADS"] = str(config.threads)
    tick = time.perf_counter()
    done = run_child(command, env=env)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise RuntimeError(f"spark-pretrain failed (exit {done.returncode}): {last_line(done.stderr)}")
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if '"kind": "step"' in line or '"kind":"step"' in line]
    rates = [record["img_per_s"] for record in steps[config.warmup:]] or [record["img_per_s"] for record in steps]
    step_times = [config.batch / rate for rate in rates]
    return {"images_per_s": config.batch / statistics.median(step_times), "steps": len(steps),
            "steps_used": len(rates), "wall_s": wall, "command": " ".join(["spark-pretrain"] + command[3:])}


def verdict(loader: float, step: float, end_to_end: float) -> str:
    """Which side bounds the end-to-end rate (see the module docstring)."""
    if loader < step * (1 - CLOSE):
        return "loading-bound (the loader alone is slower than the step alone)"
    if end_to_end >= step * (1 - CLOSE):
        return "compute-bound (end-to-end matches the step alone; the loader keeps up)"
    return ("contention: the loader alone is fast enough, but loading and compute share the CPU cores, "
            "so end-to-end is below both")


def run_e2e(config: E2EConfig) -> Dict[str, Any]:
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.data is None:
        paths = make_jpeg_folder(config.work_dir / "images", config.num_images, config.image_size, config.seed)
        data = config.work_dir / "images"
    else:
        from sparkmim.pretrain.data import list_images
        data, paths = config.data, list_images(str(config.data))
    steps = max(1, len(paths) // config.batch - config.warmup)
    pack = pack_for_benchmark(paths, config) if config.shards else None
    folder_runs, shard_runs, reads = [], [], {"folder": [], "shards": []}
    for _ in range(max(1, config.repeats)):  # alternating, so both see the same machine state
        if config.cold_cache:
            drop_page_cache()
        folder_runs.append(time_loader(paths, config, batches=max(2, steps)))
        if pack is not None:
            if config.cold_cache:
                drop_page_cache()
            shard_runs.append(time_shard_loader(Path(pack["folder"]), config, batches=max(2, steps)))
            for kind, folder in (("folder", None), ("shards", Path(pack["folder"]))):
                if config.cold_cache:
                    drop_page_cache()
                reads[kind].append(time_reading(paths, folder))
    loader = median_run(folder_runs)
    loader_device = (time_loader(paths, config, batches=max(2, steps), decode_on_device=True)
                     if config.decode_on_device else None)
    shards_device = (time_shard_loader(Path(pack["folder"]), config, batches=max(2, steps), decode_on_device=True)
                     if config.decode_on_device and pack is not None else None)
    report = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in config.__dict__.items()},
              "images": len(paths), "loader": loader, "loader_device": loader_device,
              "loader_shards": median_run(shard_runs) if shard_runs else None, "loader_shards_device": shards_device,
              "pack": pack,
              "reading": [median_run(runs) for runs in reads.values()] if shard_runs else None}
    if config.loader_only:
        return report
    step = time_step(config, steps=max(2, steps))
    end_to_end = run_pretrain(data, config)
    used = loader_device if loader_device is not None else loader
    report.update(step=step, end_to_end=end_to_end,
                  verdict=verdict(used["images_per_s"], step["images_per_s"], end_to_end["images_per_s"]))
    return report


def _rates(run: Dict[str, Any]) -> str:
    """The median rate, and every repeat's when there were several."""
    every = run.get("all_images_per_s") or []
    extra = f" ({', '.join(f'{rate:.1f}' for rate in every)})" if len(every) > 1 else ""
    return f"{run['images_per_s']:.2f}{extra}"


def format_e2e(report: Dict[str, Any]) -> str:
    config = report["config"]
    loaders = [report["loader"]] + ([report["loader_device"]] if report.get("loader_device") else [])
    used = loaders[-1]["path"]
    loaders += [report[key] for key in ("loader_shards", "loader_shards_device") if report.get(key)]
    rows = [f"| loader alone: {loader['path']} ({loader['workers']} workers) | {_rates(loader)} |" for loader in loaders]
    rows += [f"| bytes alone, no decoding, 1 process: {run['path']} | {_rates(run)} |"
             for run in report.get("reading") or []]
    if report.get("pack"):
        rows.append(f"| spark-data pack into {report['pack']['shards']} shard(s) (once; bytes copied) | "
                    f"{report['pack']['images_per_s']:.2f} |")
    head = [f"model {config['model']}, {config['size']} px, batch {config['batch']}, "
            f"{config.get('precision', 'fp32')}, channels_last {config.get('channels_last', False)}, "
            f"device {config['device']}, "
            f"{config['workers']} loader workers, threads {config['threads'] or 'default'}, {report['images']} JPEGs"
            + (", page cache dropped before each loader timing" if config.get("cold_cache") else ""),
            "", "| measurement | images/s |", "|---|---|", *rows]
    if "step" not in report:
        return "\n".join(head + ["", "loader only: no training step or spark-pretrain run measured"])
    return "\n".join([
        *head,
        f"| training step alone (synthetic input) | {report['step']['images_per_s']:.2f} |",
        f"| spark-pretrain end to end, {used} ({report['end_to_end']['steps_used']} steps) | "
        f"{report['end_to_end']['images_per_s']:.2f} |",
        "", f"verdict (for {used}): {report['verdict']}"])
