"""``spark-finetune``: fine-tune (or linearly probe) a SparK pre-trained timm CNN on ImageNet.

Runs as one process (``spark-finetune ...``) or under ``torchrun`` (DDP; NCCL on GPUs, gloo on CPU).
Setup lives here; the loop bodies are in :mod:`.engine`.
"""
import json
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from sparkmim.utils.checkpoint import UnsafeCheckpointError, checkpoint_format
from sparkmim.utils.config import ConfigError, save_config
from sparkmim.utils.disk import check_space_for_saves, keeping_last_good, state_bytes, tensor_bytes
from sparkmim.utils.distributed import DistInfo, barrier, cleanup, init_distributed
from sparkmim.utils.memory_format import channels_last_default
from sparkmim.utils.logging_setup import setup_logging
from sparkmim.utils.errors import run_command
from sparkmim.utils.metrics import MetricsLogger
from sparkmim.utils.run import amp_dtype, batch_layout, grad_scaler, seed_everything, wrap_ddp
from sparkmim.utils.run_folder import claim_run_folder
from sparkmim.utils.signals import stop_at_once

from . import checkpoints
from .config import (DATA_OPTIONS, DEFAULT_RECIPE, FinetuneConfig, UserLayers, classifier_kwargs, parse,
                     reads_values, resolve, resolve_eval)
from .data import (DataError, ImageFolderDataset, check_same_classes, class_difference, dataset_dirs, eval_loader,
                   eval_transform, fill_norm_stats, image_reader, train_loader, train_transform)
from .engine import Schedule, Trainer, evaluate, train_one_epoch
from .layer_decay import LayerDecayError, describe_groups, param_groups
from .models import count_parameters, create_classifier, create_linear_probe
from .optim import create_criterion, create_mixup, create_optimizer
from .weights import WeightLoadingError, load_pretrained

logger = logging.getLogger(__name__)

# bad input, reported as one line instead of a traceback
USER_ERRORS = (ConfigError, checkpoints.CheckpointError, DataError, WeightLoadingError, LayerDecayError,
               UnsafeCheckpointError, FileNotFoundError)

def build_model(config: FinetuneConfig, num_classes: int) -> nn.Module:
    if config.linear_probe:
        return create_linear_probe(config.model, num_classes, classifier_kwargs(config))
    return create_classifier(config.model, num_classes, config.drop_path, classifier_kwargs(config))


def weight_target(model: nn.Module) -> nn.Module:
    """The module that receives pre-trained weights (the backbone of a linear probe)."""
    return getattr(model, "backbone", model)


def synchronised_batchnorms(model: nn.Module) -> nn.Module:
    """Every BatchNorm with cross-GPU statistics, through timm's converter: torch's own turns timm's
    ``BatchNormAct2d`` (EfficientNet, RegNet, MobileNet, ...) into a plain SyncBatchNorm and so drops
    the activation and drop path those layers carry."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def wrap_distributed(model: nn.Module, config: FinetuneConfig, dist_info: DistInfo) -> nn.Module:
    if not dist_info.distributed:
        return model
    if config.sync_bn and not config.linear_probe:
        if dist_info.device.type == "cuda":
            model = synchronised_batchnorms(model)
        else:
            logger.warning("SyncBatchNorm needs CUDA; on CPU each process keeps its own BatchNorm statistics")
    return wrap_ddp(model, dist_info.device, dist_info.local_rank)


def load_datasets(config: FinetuneConfig, training: bool) -> Tuple[Optional[ImageFolderDataset], ImageFolderDataset]:
    train_dir, val_dir = dataset_dirs(config, training)
    reader = image_reader(config)
    val = ImageFolderDataset(val_dir, eval_transform(config), **reader)
    if not training:
        return None, val
    if train_dir is None:
        raise ConfigError("training needs --train-dir (or --data with train/ and val/)")
    train = ImageFolderDataset(train_dir, train_transform(config), **reader)
    check_same_classes(train, val)
    logger.info("data: %d classes, %d training and %d validation images", len(train.classes), len(train), len(val))
    return train, val


def restore_or_initialise(config: FinetuneConfig, model: nn.Module, classes: List[str],
                          resume_from: Optional[Path]) -> Optional[Dict[str, Any]]:
    """Load the run's checkpoint ``resume_from`` when resuming (returned), else the pre-trained weights, if any."""
    record = checkpoints.load_record(resume_from, kind="training") if resume_from else None
    if record is not None:
        if record["arch"] != config.model or record["classes"] != classes:
            classes_differ = (f" ({class_difference(record['classes'], classes, 'the checkpoint', 'the data')})"
                              if record["classes"] != classes else "")
            raise checkpoints.CheckpointError(
                f"{resume_from} was trained as {record['arch']} on {len(record['classes'])} classes, not as this "
                f"run's {config.model} on {len(classes)}{classes_differ}")
        checkpoints.load_network_state(model, record["model"], record, config.as_dict(), resume_from)
        logger.info("resuming from %s (epoch %d done, step %d)", resume_from, record["epoch"], record["step"])
    elif config.weights:
        load_pretrained(weight_target(model), config.weights, allow_unsafe=config.allow_unsafe)
    else:
        logger.warning("no --weights given: fine-tuning from random initialisation")
    return record


def keep_recorded_weights(config: FinetuneConfig, record: Dict[str, Any]) -> FinetuneConfig:
    """A resume needs no ``--weights`` (the checkpoint holds the network), but the run's config.yaml must
    still name the encoder the run started from: it was rewritten with ``weights: null``, and used again as
    a recipe it fine-tuned from random weights."""
    recorded = (record.get("config") or {}).get("weights")
    return replace(config, weights=recorded) if recorded and not config.weights else config


def optimisation(config: FinetuneConfig, model: nn.Module, record: Optional[Dict[str, Any]], dist_info: DistInfo
                 ) -> Tuple[Optional[Any], torch.optim.Optimizer, Optional[Any]]:
    """(EMA, optimizer with layer-decay groups, fp16 grad scaler), restored from ``record`` when resuming."""
    ema = None
    if config.ema > 0:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=config.ema)
        if record is not None and record.get("ema") is not None:
            ema.module.load_state_dict(record["ema"])
    decay = config.layer_decay
    if config.linear_probe and decay != 1.0:
        logger.info("--linear-probe trains the head only: layer decay %s ignored", decay)
        decay = 1.0
    groups = param_groups(model, decay, config.layer_grouping)
    if dist_info.is_main:
        logger.info("parameter groups (layer decay %s, grouping %s):\n%s", decay, config.layer_grouping,
                    describe_groups(groups))
    optimizer = create_optimizer(groups, config)
    scaler = grad_scaler(config.amp, dist_info.device)
    if record is not None:
        optimizer.load_state_dict(record["optimizer"])
        if scaler is not None and record.get("scaler"):
            scaler.load_state_dict(record["scaler"])
    return ema, optimizer, scaler


def open_metrics(out: Path, record: Optional[Dict[str, Any]], is_main: bool) -> MetricsLogger:
    """The metrics file, cut back to the rows the resumed checkpoint covers (all of them for a fresh
    start), so every step and epoch appears once however the earlier process ended; TensorBoard drops
    its events after the checkpoint's step likewise."""
    if record is None:
        return MetricsLogger(out, enabled=is_main, keep_rows=0, purge_step=0)
    return MetricsLogger(out, enabled=is_main, keep_rows=record.get("metrics_rows"), purge_step=record["step"] + 1)


def check_space_for_checkpoints(model: nn.Module, with_ema: bool, out: Path) -> None:
    """Warn at start when the run folder cannot hold the saves: the last checkpoint (weights, EMA weights,
    AdamW's two moments) and the best weights (and best EMA weights), each written beside the old file."""
    weights, ema_weights = state_bytes(model), state_bytes(model) if with_ema else 0
    trainable = tensor_bytes(p for p in model.parameters() if p.requires_grad)
    check_space_for_saves(out, {checkpoints.LAST: weights + ema_weights + 2 * trainable, checkpoints.BEST: weights,
                                checkpoints.BEST_EMA: ema_weights}, "saving the checkpoints")


@dataclass
class FinetuneRun:
    """What the epoch loop needs, built once by :func:`prepare`; ``config`` is the run's as completed there
    (--norm-stats auto), which the checkpoints record."""
    config: FinetuneConfig
    trainer: Trainer
    loader: Any
    val_loader: Any
    steps_per_epoch: int
    classes: List[str]
    record: Optional[Dict[str, Any]]


def prepare(config: FinetuneConfig, dist_info: DistInfo, out: Path) -> FinetuneRun:
    """Data, model (resumed or pre-trained), optimisation, loaders and the per-step schedule."""
    device = dist_info.device
    if config.model_recipe == DEFAULT_RECIPE:
        logger.warning("no built-in recipe for %s: using the default recipe (recipes/%s.yaml, the paper's ResNet-50 "
                       "recipe without stochastic depth); override any option with --recipe or on the command line",
                       config.model, DEFAULT_RECIPE)
    resume_from = checkpoints.resume_path(config.resume, out)
    config = fill_norm_stats(config, resume_from)
    if reads_values(config):
        logger.info("data read with its own values: %d channel(s), mean %s, std %s", config.in_chans, config.mean,
                    config.std)
    train_set, val_set = load_datasets(config, training=True)
    classes = train_set.classes
    layout = batch_layout(config.batch_size, dist_info.world_size, config.micro_batch, config.accum_steps)
    seed_everything(config.seed)  # identical initial head on every process (DDP and EMA rely on it)
    model = build_model(config, len(classes))
    record = restore_or_initialise(config, model, classes, resume_from)
    if record is not None:
        config = keep_recorded_weights(config, record)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    logger.info("model %s: %s (channels_last %s)", config.model, count_parameters(model),
                "on" if config.channels_last else "off")
    ema, optimizer, scaler = optimisation(config, model, record, dist_info)
    ddp_model = wrap_distributed(model, config, dist_info)
    mixup = create_mixup(config, len(classes))
    loader = train_loader(train_set, config, layout.micro_batch, dist_info.rank, dist_info.world_size,
                          dist_info.device)
    val_loader = eval_loader(val_set, config, config.eval_batch_size or layout.micro_batch, dist_info.rank,
                             dist_info.world_size, dist_info.device)
    steps_per_epoch = len(loader) // layout.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"fewer training batches per process ({len(loader)}) than --accum-steps "
                          f"({layout.accum_steps}); lower --batch-size or --accum-steps")
    if record is not None:
        checkpoints.check_epochs_not_passed(resume_from, record, config.epochs)
        checkpoints.check_same_schedule(resume_from, record, steps_per_epoch)
    peak_lr = config.base_lr * config.batch_size / 256
    schedule = Schedule(total_steps=config.epochs * steps_per_epoch,
                        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
                        peak_lr=peak_lr, weight_decay=config.weight_decay)
    trainer = Trainer(model=ddp_model, module=ddp_model.module if hasattr(ddp_model, "module") else ddp_model,
                      optimizer=optimizer, criterion=create_criterion(config, mixup is not None), schedule=schedule,
                      device=device, mixup=mixup, ema=ema, scaler=scaler, amp_dtype=amp_dtype(config.amp),
                      channels_last=config.channels_last, clip_grad=config.clip_grad, accum_steps=layout.accum_steps,
                      log_interval=config.log_interval, progress=config.progress,
                      metrics=open_metrics(out, record, dist_info.is_main))
    if dist_info.is_main:
        check_space_for_checkpoints(model, ema is not None, out)
        save_config(config, out / "config.yaml")
        logger.info("lr = %g x %d / 256 = %g; %d steps per epoch, %d epochs, %d warmup steps; %d x %d x %d "
                    "(processes x micro-batch x accumulation)", config.base_lr, config.batch_size,
                    peak_lr, steps_per_epoch, config.epochs, schedule.warmup_steps, dist_info.world_size,
                    layout.micro_batch, layout.accum_steps)
    return FinetuneRun(config, trainer, loader, val_loader, steps_per_epoch, classes, record)


def check_inputs_before_claiming(config: FinetuneConfig, out: Path) -> None:
    """What claiming the folder could destroy or would be wasted on, checked first: the data folders and
    --weights exist, --overwrite would not delete the --weights file, and the folder's checkpoint_last.pth
    (if any) is a spark-finetune one: a spark-pretrain folder given as --output-dir was refused with
    advice to resume it, and with --overwrite lost its checkpoint."""
    train_dir, val_dir = dataset_dirs(config)
    for flag, folder in (("--train-dir", train_dir), ("--val-dir", val_dir)):
        if folder is not None and not folder.is_dir():
            raise DataError(f"{flag} {folder}: folder not found")
    if config.weights:
        weights = Path(config.weights)
        if not weights.is_file():
            problem = "a folder, not a file" if weights.is_dir() else "file not found"
            raise WeightLoadingError(f"--weights {weights}: {problem}")
        outputs = (checkpoints.LAST, checkpoints.BEST, checkpoints.BEST_EMA)
        if config.overwrite and weights.resolve().parent == out.resolve() and weights.name in outputs:
            raise ConfigError(f"--overwrite would delete the --weights file {weights}: copy it elsewhere or choose "
                              "another --output-dir")
    last = out / checkpoints.LAST
    if last.is_file():
        kind = checkpoint_format(last, config.allow_unsafe)
        if kind is not None and kind != checkpoints.FORMAT:
            raise ConfigError(f"{out} holds a {kind or 'foreign'} run ({checkpoints.LAST}), not a spark-finetune one: "
                              "give spark-finetune its own --output-dir (pre-trained weights go to --weights)")


def train(config: FinetuneConfig, dist_info: DistInfo) -> Dict[str, Any]:
    """The fine-tuning run in its claimed folder (one writer: see :mod:`sparkmim.utils.run_folder`);
    returns the final summary (best accuracies and checkpoint paths)."""
    out = Path(config.output_dir)
    check_inputs_before_claiming(config, out)
    out.mkdir(parents=True, exist_ok=True)
    lock = claim_run_folder(out, "spark-finetune", checkpoints.LAST, config.resume, config.overwrite,
                            is_main=dist_info.is_main,
                            other_outputs=(checkpoints.BEST, checkpoints.BEST_EMA, "summary.json", "eval.jsonl"))
    last = out / checkpoints.LAST
    try:
        with stop_at_once(), keeping_last_good(last):
            return train_in_folder(config, dist_info, out)
    except KeyboardInterrupt as interrupt:
        kept = f"the last checkpoint {last.resolve()} is kept" if last.is_file() else "no checkpoint had been written"
        reason = f"{interrupt}; " if str(interrupt) else ""
        raise KeyboardInterrupt(f"{reason}{kept}; continue with --resume auto (the interrupted epoch starts "
                                "again)") from None
    finally:
        if lock is not None:
            lock.release()


def train_in_folder(config: FinetuneConfig, dist_info: DistInfo, out: Path) -> Dict[str, Any]:
    setup_logging(out, dist_info.rank)
    run = prepare(config, dist_info, out)
    config = run.config
    t, record, is_main, device = run.trainer, run.record, dist_info.is_main, dist_info.device
    best = dict(record["best"]) if record is not None else {"top1": -1.0, "ema_top1": -1.0}
    step = record["step"] if record is not None else 0
    start_epoch = record["epoch"] if record is not None else 0
    last_epoch = min(config.epochs, config.stop_after_epoch or config.epochs)
    if start_epoch >= last_epoch:
        until = (f"--stop-after-epoch {last_epoch}" if last_epoch < config.epochs else f"--epochs {last_epoch}")
        logger.info("nothing to train: %d epoch(s) already done, %s", start_epoch, until)
    for epoch in range(start_epoch, last_epoch):
        # random streams are a function of (seed, rank, epoch), so a resumed run continues exactly
        seed_everything(config.seed + dist_info.rank + 7919 * epoch)
        run.loader.sampler.set_epoch(epoch)
        stats = train_one_epoch(t, run.loader, epoch, step, run.steps_per_epoch, is_main)
        step = stats.pop("step")
        result = evaluate(t.module, run.val_loader, device, t.amp_dtype, config.channels_last)
        row = {"kind": "epoch", "epoch": epoch + 1, **stats, **{f"val_{k}": v for k, v in result.items()}}
        if t.ema is not None:
            ema_result = evaluate(t.ema.module, run.val_loader, device, t.amp_dtype, config.channels_last)
            row.update({f"ema_{k}": v for k, v in ema_result.items() if k in ("top1", "top5")})
        if is_main:  # the row before the checkpoint that records it (see open_metrics)
            t.metrics.log(row, step=step, prefix="epoch/")
            save_epoch_checkpoints(config, out, t.module, t.ema, t.optimizer, t.scaler, run.classes, epoch + 1, step,
                                   best, row, t.metrics.rows)
            logger.info("epoch %d/%d: loss %.4f, val top-1 %.2f top-5 %.2f%s (best %.2f)%s", epoch + 1,
                        config.epochs, row["train_loss"], row["val_top1"], row["val_top5"],
                        f", EMA top-1 {row['ema_top1']:.2f}" if t.ema is not None else "", best["top1"],
                        f"; skipped unreadable: {row['train_skipped']} train, {row['val_skipped']} val"
                        if row["train_skipped"] or row["val_skipped"] else "")
        else:
            track_best(best, row)
        barrier()
    t.metrics.close()
    # the protocol and class count let spark-report tell a 1000-class fine-tuning from other runs
    summary = {"best_top1": best["top1"], "best_ema_top1": best["ema_top1"] if t.ema is not None else None,
               "epochs_done": last_epoch, "epochs": config.epochs, "output_dir": str(out),
               "linear_probe": config.linear_probe, "classes": len(run.classes)}
    if is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def track_best(best: Dict[str, float], row: Dict[str, Any]) -> Tuple[bool, bool]:
    """Update the best accuracies in place; returns (model improved, EMA improved)."""
    improved = row["val_top1"] > best["top1"]
    ema_improved = "ema_top1" in row and row["ema_top1"] > best["ema_top1"]
    if improved:
        best["top1"] = row["val_top1"]
    if ema_improved:
        best["ema_top1"] = row["ema_top1"]
    return improved, ema_improved


def save_epoch_checkpoints(config, out, module, ema, optimizer, scaler, classes, epoch, step, best, row,
                           metrics_rows: int) -> None:
    improved, ema_improved = track_best(best, row)
    if improved:
        metrics_row = {"top1": row["val_top1"], "top5": row["val_top5"]}
        checkpoints.save(checkpoints.weights_record(module.state_dict(), config, classes, epoch, metrics_row,
                                                    ema=False), out, checkpoints.BEST)
    if ema_improved:
        metrics_row = {"top1": row["ema_top1"], "top5": row["ema_top5"]}
        checkpoints.save(checkpoints.weights_record(ema.module.state_dict(), config, classes, epoch,
                                                    metrics_row, ema=True), out, checkpoints.BEST_EMA)
    checkpoints.save(checkpoints.training_record(
        module.state_dict(), ema.module.state_dict() if ema is not None else None, optimizer, scaler, config,
        classes, epoch, step, best, metrics_rows), out, checkpoints.LAST)


def evaluate_checkpoint(user: UserLayers, dist_info: DistInfo) -> Dict[str, Any]:
    """``--eval-only``: evaluate a fine-tuned checkpoint on the validation folder."""
    path = user.get("checkpoint")
    if not path:
        if not user.get("output_dir"):
            raise ConfigError("--eval-only needs --checkpoint (or --output-dir holding checkpoint_best.pth)")
        # the run's best EMA weights are in their own file
        path = Path(user.get("output_dir")) / (checkpoints.BEST_EMA if user.get("eval_ema") else checkpoints.BEST)
    record = checkpoints.load_record(Path(path))
    config = resolve_eval(user, record["config"])
    setup_logging(Path(config.output_dir) if user.get("output_dir") else None, dist_info.rank)
    if config.model != record["arch"]:
        raise ConfigError(f"{path} holds a {record['arch']}, not a {config.model}")
    if not (config.data or config.val_dir):
        raise ConfigError("--eval-only needs --data (with a val/ folder) or --val-dir")
    state = record["model"]
    if user.get("eval_ema"):
        if record["kind"] == "training":
            if record.get("ema") is None:
                raise ConfigError(f"{path} has no EMA weights (the run had --ema 0)")
            state = record["ema"]
        elif not record.get("ema_weights"):
            raise ConfigError(f"{path} holds the model's weights; for the EMA's use {checkpoints.BEST_EMA}")
    try:
        _, val_set = load_datasets(config, training=False)
    except DataError as error:
        if any(user.get(key) for key in DATA_OPTIONS):
            raise
        raise DataError(f"{error} (the data folders {path} was trained with; give --data or --val-dir)") from None
    if val_set.classes != record["classes"]:
        difference = class_difference(record["classes"], val_set.classes, "the checkpoint", "the validation folder")
        raise ConfigError(f"the validation classes differ from the {len(record['classes'])} classes the checkpoint "
                          f"was trained on: {difference}")
    model = build_model(config, len(record["classes"]))
    checkpoints.load_network_state(model, state, record, config.as_dict(), Path(path))
    model.to(dist_info.device)
    channels_last = channels_last_default(config.channels_last, dist_info.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batch = config.eval_batch_size or 128  # the training batch may be far too big for one device
    loader = eval_loader(val_set, config, batch, dist_info.rank, dist_info.world_size, dist_info.device)
    result = evaluate(model, loader, dist_info.device, amp_dtype(config.amp), channels_last)
    # checkpoint_best_ema.pth holds EMA weights also when given as --checkpoint without --eval-ema
    result["checkpoint"], result["ema"] = str(path), bool(user.get("eval_ema") or record.get("ema_weights"))
    result["val_dir"], result["input_size"] = str(val_set.root), config.input_size
    if dist_info.is_main and user.get("output_dir"):
        MetricsLogger(Path(user.get("output_dir")), name="eval", tensorboard=False).log(result)
    return result


def _main(argv: Optional[Sequence[str]]) -> int:
    """Evaluate a checkpoint (--eval-only) or train, printing the headline figure."""
    user = parse(argv)
    if user.get("eval_only"):
        dist_info = init_distributed(user.get("device") or "auto")
        result = evaluate_checkpoint(user, dist_info)
        if dist_info.is_main:
            print(f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  ({result['images']} images, "
                  f"{result['skipped']} unreadable skipped) from {result['checkpoint']}"
                  f"{' (EMA weights)' if result['ema'] else ''}")
        return 0
    config = resolve(user)
    dist_info = init_distributed(config.device)
    config = replace(config, channels_last=channels_last_default(config.channels_last, dist_info.device))
    summary = train(config, dist_info)
    if dist_info.is_main:
        ema_part = (f", best EMA top-1 {summary['best_ema_top1']:.2f}"
                    if summary["best_ema_top1"] is not None else "")
        print(f"best top-1 {summary['best_top1']:.2f}{ema_part}; checkpoints in {summary['output_dir']}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors become one line on stderr (exit 2)."""
    return run_command("spark-finetune", lambda: _main(argv), statuses={error: 2 for error in USER_ERRORS},
                       cleanup=cleanup)


if __name__ == "__main__":
    sys.exit(main())
