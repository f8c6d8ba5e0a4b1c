"""``spark-pretrain``: set up data, model, optimizer and state, run the loop, write the outputs.

Launch plainly (one process) or with ``torchrun`` (DDP, SyncBN when more than one process). Every
user mistake ends in a one-line ``spark-pretrain: error: ...`` and exit status 2; a non-finite loss
ends with exit status 1; a SIGTERM/SIGINT stop saves and exits 0.
"""
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader

from sparkmim.sparse.norms import check_norm_kernel, select_norm_kernel
from sparkmim.utils.checkpoint import UnsafeCheckpointError, load_file
from sparkmim.utils.config import save_config
from sparkmim.utils.disk import check_space_for_saves, keeping_last_good, state_bytes, tensor_bytes
from sparkmim.utils.distributed import DistInfo, barrier, cleanup, computed_on_main, init_distributed
from sparkmim.utils.memory_format import channels_last_default
from sparkmim.utils.errors import UserError, describe_error, first_line, run_command
from sparkmim.utils.logging_setup import setup_logging
from sparkmim.utils.metrics import MetricsLogger
from sparkmim.utils.pictures import plot_loss_curve, plot_reconstructions, reconstruct
from sparkmim.utils.shards import ShardSet, is_shard_source, resolve_shards
from sparkmim.utils.values import decode_values, estimate_norm_stats, norm_stats_of, saved_norm_stats
from sparkmim.utils.run import amp_dtype, batch_layout, grad_scaler, loader_workers, seed_everything, wrap_ddp
from sparkmim.sparse.encoder import check_model_name
from sparkmim.utils.run_folder import RunFolderLock, claim_run_folder, is_main_process
from sparkmim.utils.schedule import Schedule
from sparkmim.utils.signals import GracefulStop, ignore_interrupt_in_worker

from . import checkpointing as ckpt
from .config import DEFAULTS, PretrainConfig, check_input_size, normalise_size, peak_lr, reads_values, resolve
from .data import (PretrainImages, SkipReporter, StepBatchSampler, ValueSpec, collate, first_readable,
                   list_images, load_vis_images)
from .demo_data import ensure_demo_dataset
from .device_decode import DeviceDecoder, EncodedImages, collate_encoded
from .engine import Loop, NonFiniteLossError
from .shard_stream import (StreamLayout, check_stream_count, decoded_samples, first_shard_readable, shard_loader,
                           shard_vis_images, warn_if_streams_changed)
from .optim import build_optimizer

logger = logging.getLogger("sparkmim.pretrain")
CPU_MICRO_BATCH_WARNING = 256  # images per forward pass above which a CPU run is told to accumulate

TrainingData = Union[List[Path], ShardSet]  # image files, or tar shards with their sample counts

def prepare_output_dir(path: Path) -> Path:
    """Create the run folder and prove it is writable before any expensive work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"  # one per process: ranks start together
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the output folder {path} ({error.strerror or error}); "
                        "choose another --output-dir") from error
    return path


def resolve_data(config: PretrainConfig, dist_info: DistInfo) -> Tuple[TrainingData, str]:
    """Image paths or tar shards to train on; the generated demo set when no data is given."""
    source = config.data
    if source is None:
        kwargs = dict(num_images=int(config.demo_images), image_size=int(config.demo_image_size))
        if dist_info.is_main:
            folder = ensure_demo_dataset(**kwargs)
        barrier()
        if not dist_info.is_main:
            folder = ensure_demo_dataset(**kwargs)
        source = str(folder)
        logger.info("no data given: using the generated demo set in %s", folder)
    arrays = reads_values(config)
    if is_shard_source(source):
        shards = resolve_shards(source, config.shard_index)
        check_stream_count(shards, dist_info.world_size, loader_workers(config.workers))
        first_shard_readable(shards, int(config.in_chans) if arrays else None)
        return shards, source
    paths = list_images(source, arrays=arrays)
    first_readable(paths, int(config.in_chans) if arrays else None)
    return paths, source


def sample_count(data: TrainingData) -> int:
    return data.num_samples if isinstance(data, ShardSet) else len(data)


def value_spec(config: PretrainConfig) -> Optional[ValueSpec]:
    """How the files are read: None for 8-bit RGB with ImageNet's statistics (the paper's setting)."""
    if not reads_values(config):
        return None
    return ValueSpec(int(config.in_chans), tuple(config.mean), tuple(config.std))


def fill_norm_stats(config: PretrainConfig, data: TrainingData, run_dir: Path) -> PretrainConfig:
    """--norm-stats auto: the per-channel mean and std of the data, computed once and kept in the config
    (saved in config.yaml and the checkpoint). The main process computes them (from 256 files spread over
    the set; for shards, the first samples of up to 16 shards spread over it) and hands them to the others.
    A resumed run keeps the statistics its checkpoint was trained with, even when the data changed since."""
    if config.norm_stats != "auto" or config.mean is not None:
        return config
    resumed = saved_norm_stats(ckpt.find_resume(config.resume, run_dir), int(config.in_chans),
                               bool(config.allow_unsafe_load))
    if resumed is not None:
        logger.info("normalisation of the resumed checkpoint (--norm-stats auto): mean %s, std %s", *resumed)
        return dataclasses.replace(config, mean=resumed[0], std=resumed[1])
    in_chans = int(config.in_chans)

    def compute() -> Tuple[List[float], List[float]]:
        if isinstance(data, ShardSet):
            return norm_stats_of(decoded_samples(data, lambda raw, name: decode_values(raw, name, in_chans), 256,
                                                 shard_limit=16), in_chans)
        return estimate_norm_stats(data, in_chans)

    mean, std = computed_on_main(compute, "computing --norm-stats auto")
    logger.info("normalisation from the data (--norm-stats auto): mean %s, std %s", mean, std)
    return dataclasses.replace(config, mean=mean, std=std)


def build_model(config: PretrainConfig, size: Tuple[int, int]) -> torch.nn.Module:
    from sparkmim import build_spark

    encoder_kwargs = {"drop_path_rate": float(config.drop_path)} if config.drop_path else {}
    if int(config.in_chans) != 3:
        encoder_kwargs["in_chans"] = int(config.in_chans)
    try:
        return build_spark(config.model, input_size=size, mask_ratio=float(config.mask_ratio),
                           decoder_width=int(config.decoder_width), densify_norm=config.densify_norm,
                           encoder_kwargs=encoder_kwargs or None)
    except (ValueError, TypeError, KeyError, NotImplementedError) as error:
        raise UserError(f"cannot build SparK for '{config.model}' at {size[0]}x{size[1]}: "
                        f"{first_line(error)}") from error


def load_init_weight(spark: torch.nn.Module, path: str, model_name: str, allow_unsafe: bool) -> None:
    """Weights only: our full checkpoint (whole SparK), or any encoder file the core's importer
    understands (ours, the reference release files)."""
    from sparkmim.convert import load_encoder_state_dict
    from sparkmim.convert.loading import check_keys, shapes_of

    try:
        obj = load_file(path, allow_unsafe=allow_unsafe)
    except (UnsafeCheckpointError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    try:
        if isinstance(obj, dict) and obj.get("format") == ckpt.FORMAT:
            saved = (obj.get("config") or {}).get("model")
            if saved != model_name:
                raise UserError(f"--init-weight {path} is a checkpoint of '{saved}', this run builds "
                                f"'{model_name}'; pass --model {saved} or another file")
            ckpt.check_model_state(spark, obj["model"], f"--init-weight {path} does not fit this SparK model",
                                   "give the --decoder-width, --densify-norm and --in-chans it was trained with, or "
                                   "its encoder file to initialise the encoder alone")
            spark.load_state_dict(obj["model"])
            logger.info("initialised the whole SparK model from %s", path)
            return
        state, report = load_encoder_state_dict(obj)
        problems = check_keys(shapes_of(spark.encoder.model.state_dict()), shapes_of(state)).problems(model_name, 4)
        if problems:  # the keys by name: missing, unexpected, mis-shaped
            raise UserError(f"--init-weight {path} does not fit '{model_name}' ({'; '.join(problems)}); "
                            "give weights of the same model")
        spark.encoder.model.load_state_dict(state)
    except UserError:
        raise
    except Exception as error:  # not a weights file at all
        raise UserError(f"--init-weight {path} does not fit '{model_name}' ({describe_error(error)}); "
                        "give weights of the same model") from error
    dropped = getattr(report, "dropped", [])
    logger.info("initialised the encoder from %s (%d tensors; %d keys dropped)", path, len(state), len(dropped))


def write_pictures(spark: torch.nn.Module, config: PretrainConfig, data: TrainingData, size: Tuple[int, int],
                   device: torch.device, run_dir: Path, metrics_path: Path) -> Dict[str, Path]:
    outputs = {"loss curve": plot_loss_curve(metrics_path, run_dir / "loss_curve.png")}
    values = value_spec(config)
    images = shard_vis_images(data, size, int(config.num_vis), values) if isinstance(data, ShardSet) \
        else load_vis_images(data, size, int(config.num_vis), values=values)
    if images is None or int(config.num_vis) <= 0:
        return outputs
    panels = reconstruct(spark, images.to(device), seed=int(config.seed))
    # data read with its own values: drawn stretched per row (gray, or the first three bands)
    outputs["reconstructions"] = plot_reconstructions(panels, run_dir / "reconstruction.png",
                                                      stretch=values is not None)
    return outputs


def sync_batchnorms(spark: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Cross-process BatchNorm statistics for the sparse BNs (encoder, densify) and the decoder's BNs
    (the core's sync-free cross-process BatchNorm, on GPUs and CPUs alike)."""
    from sparkmim import convert_sync_batchnorm

    return convert_sync_batchnorm(spark.to(device))


def state_checksums(module: torch.nn.Module) -> Tuple[float, float]:
    """Sum of all parameters, and of the buffers of synchronised norms (running statistics): a cheap
    fingerprint logged by every rank, so replicas that drifted apart are visible in the logs."""
    from sparkmim.sparse.norms import SparseBatchNorm2d

    with torch.no_grad():
        params = sum(float(p.double().sum()) for p in module.parameters())
        synced = [m for m in module.modules() if isinstance(m, torch.nn.SyncBatchNorm)
                  or (isinstance(m, SparseBatchNorm2d) and getattr(m, "sync", False))]
        buffers = sum(float(b.double().sum()) for m in synced for b in m.buffers(recurse=False)
                      if b.is_floating_point())
    return params, buffers


def build_loader(paths: Sequence[Path], size: Tuple[int, int], seed: int, sampler: StepBatchSampler, workers: int,
                 device: torch.device, decode_on_device: bool, values: Optional[ValueSpec] = None
                 ) -> Tuple[DataLoader, Optional[DeviceDecoder]]:
    """The training DataLoader, and the callable that turns its batches into device images (device
    decoding) or None (the CPU path: workers decode and augment, batches are ready tensors)."""
    generator = torch.Generator().manual_seed(seed)
    if decode_on_device:
        dataset = EncodedImages(paths, size, seed)
        logger.info("data: JPEGs decoded on %s (workers read bytes and draw crops; other formats decoded in "
                    "the workers)", device)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_encoded,
                            generator=generator, worker_init_fn=ignore_interrupt_in_worker)
        return loader, DeviceDecoder(dataset, device)
    loader = DataLoader(PretrainImages(paths, size, seed, values), batch_sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", generator=generator,
                        worker_init_fn=ignore_interrupt_in_worker)
    return loader, None


def check_input_files(config: PretrainConfig) -> None:
    """Files named on the command line exist: fail before the data set and the model are built."""
    if config.resume not in (None, "auto"):
        ckpt.find_resume(config.resume, Path(config.output_dir))
    if config.init_weight and not Path(config.init_weight).is_file():
        raise UserError(f"--init-weight {config.init_weight}: file not found")


def place_model(spark: torch.nn.Module, config: PretrainConfig, dist_info: DistInfo
                ) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(SparK on its device, the module the loop calls: DDP-wrapped and/or compiled when asked)."""
    device = dist_info.device
    spark = spark.to(device)
    if config.channels_last:
        spark = spark.to(memory_format=torch.channels_last)
    model: torch.nn.Module = spark
    if dist_info.distributed:
        spark = sync_batchnorms(spark, device)
        model = wrap_ddp(spark, device, device.index if device.type == "cuda" else 0)
    select_norm_kernel(spark, config.norm_kernel)  # after sync_batchnorms: the decoder's cross-process norms too
    if config.compile:
        model = torch.compile(model)
    return spark, model


def build_schedule(config: PretrainConfig, steps_per_epoch: int) -> Schedule:
    return Schedule(total_steps=steps_per_epoch * int(config.epochs),
                    warmup_steps=float(config.warmup_epochs) * steps_per_epoch, peak_lr=peak_lr(config),
                    weight_decay=float(config.weight_decay), weight_decay_end=float(config.weight_decay_end),
                    warmup_start=float(config.warmup_start), final_lr=float(config.final_lr))


def seed_streams(rng_states: Optional[List[Dict[str, Any]]], seed: int, dist_info: DistInfo, start_step: int) -> None:
    """Each rank's RNG: restored from the checkpoint, or seeded apart (different masks per rank).

    A checkpoint written without a GPU has no GPU generator state; the masks are drawn on the GPU, so that
    generator is seeded per rank and step (left alone it would start from torch's fixed default seed on
    every rank, and every rank would draw the same masks)."""
    resume_seed = seed + 1000 * dist_info.rank + start_step  # for streams the checkpoint cannot restore
    if rng_states is None:
        seed_everything(seed + dist_info.rank)
    elif not ckpt.restore_rng_state(rng_states, dist_info.rank):
        logger.warning("the checkpoint was written by %d process(es), this run has %d: RNG streams are "
                       "re-seeded, so masks differ from an uninterrupted run", len(rng_states), dist_info.world_size)
        seed_everything(resume_seed)
    elif dist_info.device.type == "cuda" and "cuda" not in rng_states[dist_info.rank]:
        logger.warning("the checkpoint was written without a GPU: the GPU's random stream (the masks) is "
                       "seeded from --seed, the rank and the step, so masks differ from an uninterrupted run")
        torch.cuda.manual_seed(resume_seed)


def report_outputs(result: Any, run_dir: Path, saver: ckpt.RunSaver, metrics_path: Path,
                   pictures: Dict[str, Path]) -> None:
    final = f", last epoch mean loss {result.epoch_losses[-1]:.4f}" if result.epoch_losses else ""
    lines = [f"spark-pretrain finished: {result.step} steps{final}. Outputs:",
             f"  run folder        {run_dir.resolve()}",
             f"  full checkpoint   {saver.full_path.resolve()}  (--resume)",
             f"  encoder (timm)    {saver.encoder_path.resolve()}  (fine-tuning, detection)",
             f"  config            {(run_dir / 'config.yaml').resolve()}",
             f"  metrics           {metrics_path.resolve()}"]
    if (run_dir / "tensorboard").is_dir():
        lines.append(f"  tensorboard       {(run_dir / 'tensorboard').resolve()}")
    lines += [f"  {name:<17} {path.resolve()}" for name, path in pictures.items()]
    print("\n".join(lines))


def start(argv: Optional[Sequence[str]]
          ) -> Tuple[PretrainConfig, Path, DistInfo, TrainingData, Optional[RunFolderLock]]:
    """Resolve and check the options (cheap checks first), claim the run folder, join the process group,
    set up logging and list the data: (config, run folder, process info, image paths or shards, folder lock)."""
    config = resolve(argv)
    check_model_name(config.model)
    check_input_size(config)
    check_input_files(config)
    run_dir = prepare_output_dir(Path(config.output_dir))
    # before the process group exists: the main process is told by torchrun's RANK
    lock = claim_run_folder(run_dir, "spark-pretrain", ckpt.LAST_NAME, config.resume, config.overwrite,
                            is_main=is_main_process())
    try:
        dist_info = init_distributed(config.device)
        config = dataclasses.replace(config,
                                     channels_last=channels_last_default(config.channels_last, dist_info.device))
        try:
            check_norm_kernel(config.norm_kernel, dist_info.device)
        except ValueError as error:
            raise UserError(f"--norm-kernel {config.norm_kernel}: {error}") from None
        setup_logging(run_dir, rank=dist_info.rank)
        logger.info("spark-pretrain: %d process(es), device %s (channels_last %s, norm kernel %s), run folder %s",
                    dist_info.world_size, dist_info.device, "on" if config.channels_last else "off",
                    config.norm_kernel, run_dir.resolve())
        data, source = resolve_data(config, dist_info)
        described = data.describe() if isinstance(data, ShardSet) else f"{len(data)} image files from {source}"
        logger.info("data: %s%s", described,
                    f" ({config.in_chans} channel(s), read with their own values)" if reads_values(config) else "")
        return fill_norm_stats(config, data, run_dir), run_dir, dist_info, data, lock
    except BaseException:  # bad data found after the claim: the folder is free again (run() releases it later)
        if lock is not None:
            lock.release()
        raise


def train(loop_kwargs: Dict[str, Any], run_dir: Path, config: PretrainConfig, dist_info: DistInfo,
          resume: ckpt.ResumeState) -> Tuple[Any, Path]:
    """The loop under a stop-signal guard, with the metrics file open (cut back to the rows the
    checkpoint covers): (its result, the metrics path)."""
    metrics = MetricsLogger(run_dir, enabled=dist_info.is_main, tensorboard=bool(config.tensorboard),
                            keep_rows=resume.progress.metrics_rows, purge_step=resume.step)
    try:
        with GracefulStop() as stop:
            loop = Loop(**loop_kwargs, dist_info=dist_info, metrics=metrics, stop=stop, resumed=resume.progress,
                        amp_dtype=amp_dtype(config.amp), channels_last=bool(config.channels_last),
                        progress=bool(config.progress), log_interval=int(config.log_interval))
            return loop.run(resume.step), metrics.path
    finally:
        metrics.close()


def check_space_for_checkpoints(spark: torch.nn.Module, run_dir: Path, model_name: str) -> None:
    """Warn at start when the run folder cannot hold the next save: the full checkpoint (weights and
    LAMB's two moments) and the encoder export, each written beside the old file before replacing it."""
    full = state_bytes(spark) + 2 * tensor_bytes(spark.parameters())
    check_space_for_saves(run_dir, {ckpt.LAST_NAME: full, ckpt.encoder_name(model_name): state_bytes(spark.encoder.model)},
                          "saving the checkpoint")


def run(argv: Optional[Sequence[str]] = None) -> int:
    config, run_dir, dist_info, data, lock = start(argv)
    try:
        with keeping_last_good(run_dir / ckpt.LAST_NAME):
            return train_and_report(config, run_dir, dist_info, data)
    finally:
        if lock is not None:
            lock.release()


def train_and_report(config: PretrainConfig, run_dir: Path, dist_info: DistInfo, data: TrainingData) -> int:
    """Build, resume, train and write the outputs of a claimed run folder."""
    size = normalise_size(config.input_size)
    layout = batch_layout(int(config.batch_size), dist_info.world_size, config.micro_batch, config.accum_steps)
    if dist_info.device.type == "cpu" and layout.micro_batch > CPU_MICRO_BATCH_WARNING:
        # a GPU that runs out of memory says so; a CPU process is killed by the system without a word
        logger.warning("%d images per forward pass on the CPU: the memory may run out, and the system would then "
                       "stop the run without a message; give --micro-batch (e.g. 64) to accumulate the batch of %d",
                       layout.micro_batch, layout.global_batch)

    seed = int(config.seed)
    seed_everything(seed)  # identical initial weights on every rank
    spark = build_model(config, size)
    if config.init_weight:
        load_init_weight(spark, config.init_weight, config.model, bool(config.allow_unsafe_load))
    spark, model = place_model(spark, config, dist_info)
    sampler = StepBatchSampler(sample_count(data), layout.global_batch, layout.micro_batch, dist_info.rank,
                               dist_info.world_size, seed)
    if sampler.num_images < layout.global_batch:
        logger.warning("the data has %d image(s), fewer than one global batch of %d: every step repeats images "
                       "(lower --batch-size, or add data)", sampler.num_images, layout.global_batch)
    schedule = build_schedule(config, sampler.steps_per_epoch)
    optimizer = build_optimizer(spark, schedule.peak_lr, config.betas, float(config.clip_grad))
    scaler = grad_scaler(config.amp, dist_info.device)
    resume = ckpt.resume_into(config, run_dir, spark, optimizer, scaler, sampler.steps_per_epoch, list(DEFAULTS))
    start_step = resume.step
    if start_step >= schedule.total_steps:
        logger.info("nothing to do: the checkpoint is at step %d of %d", start_step, schedule.total_steps)
    sampler.start_step = start_step
    workers = loader_workers(config.workers)
    if isinstance(data, ShardSet):
        streams = StreamLayout(sampler.steps_per_epoch, sampler.accumulation, sampler.micro_batch, sampler.rank,
                               dist_info.world_size, max(1, workers), start_step)
        warn_if_streams_changed(resume.sampler.get("data_streams"), streams)
        loader, prepare_batch = shard_loader(data, streams, size, seed, value_spec(config), int(config.shuffle_buffer),
                                             workers, dist_info.device, bool(config.decode_on_device))
    else:
        loader, prepare_batch = build_loader(data, size, seed, sampler, int(workers), dist_info.device,
                                             bool(config.decode_on_device), value_spec(config))
    batches = iter(loader)
    seed_streams(resume.rng, seed, dist_info, start_step)
    if dist_info.is_main:
        check_space_for_checkpoints(spark, run_dir, config.model)
        save_config({k: config[k] for k in DEFAULTS}, run_dir / "config.yaml")
    logger.info("schedule: %d epochs x %d steps, global batch %d = %d process(es) x %d micro-batch x %d "
                "accumulation; peak lr %.3g, warmup %d steps", int(config.epochs), sampler.steps_per_epoch,
                layout.global_batch, dist_info.world_size, layout.micro_batch, layout.accum_steps, schedule.peak_lr,
                round(schedule.warmup_steps))
    saver = ckpt.RunSaver(run_dir / ckpt.LAST_NAME, run_dir / ckpt.encoder_name(config.model), spark, optimizer,
                          scaler, config, {"seed": seed, "steps_per_epoch": sampler.steps_per_epoch,
                                           "num_images": sample_count(data), "global_batch": layout.global_batch,
                                           "data_streams": [dist_info.world_size, max(1, int(workers))]},
                          dist_info.is_main, barrier)

    spark.train()
    try:
        result, metrics_path = train(
            dict(model=model, params=[p for p in spark.parameters() if p.requires_grad], optimizer=optimizer,
                 scaler=scaler, schedule=schedule, batches=batches, accumulation=layout.accum_steps,
                 steps_per_epoch=sampler.steps_per_epoch, total_steps=schedule.total_steps,
                 global_batch=layout.global_batch, skips=SkipReporter(data if isinstance(data, list) else (),
                                                  int(config.in_chans) if reads_values(config) else None), save=saver, prepare_batch=prepare_batch),
            run_dir, config, dist_info, resume)
    finally:
        del batches  # ends the loader's workers before the pictures and the report

    params_sum, buffers_sum = state_checksums(spark)
    logger.info("rank %d state after step %d: parameter checksum %.12e, synchronised-norm buffer checksum %.12e",
                dist_info.rank, result.step, params_sum, buffers_sum)
    if result.stopped_by_signal:
        if dist_info.is_main:
            print(f"spark-pretrain: stopped after step {result.step}; checkpoint {saver.full_path.resolve()}; "
                  "run the same command with --resume auto to continue")
        cleanup()
        return 0
    pictures = write_pictures(spark, config, data, size, dist_info.device, run_dir, metrics_path) \
        if dist_info.is_main else {}
    barrier()
    cleanup()
    if dist_info.is_main:
        report_outputs(result, run_dir, saver, metrics_path, pictures)
    return 0


def _run_logging_divergence(argv: Optional[Sequence[str]]) -> int:
    try:
        return run(argv)
    except NonFiniteLossError as error:
        logger.error("%s", error)  # into the run's log file too
        raise


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors become one line on stderr (exit 2); a non-finite loss exits 1."""
    return run_command("spark-pretrain", lambda: _run_logging_divergence(argv), statuses={NonFiniteLossError: 1},
                       cleanup=cleanup)


if __name__ == "__main__":
    sys.exit(main())
