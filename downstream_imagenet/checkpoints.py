"""Fine-tuning checkpoints: ``checkpoint_last.pth`` (full training state, for resume) and
``checkpoint_best.pth`` / ``checkpoint_best_ema.pth`` (weights of the best model / best EMA model).

All are written atomically and hold only CPU tensors and plain Python values, so they load with safe
(weights_only) unpickling on any machine, with or without the GPU they were written on.
"""
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from sparkmim.utils.checkpoint import load_file, on_host, save_atomic
from sparkmim.utils.config import option_difference
from sparkmim.utils.errors import UserError, first_line

logger = logging.getLogger(__name__)

FORMAT = "sparkmim-finetune"
LAST, BEST, BEST_EMA = "checkpoint_last.pth", "checkpoint_best.pth", "checkpoint_best_ema.pth"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, of the wrong kind, or does not match the run."""


def weights_record(model_state: Dict[str, torch.Tensor], config: Mapping[str, Any], classes: list,
                   epoch: int, metrics: Dict[str, float], ema: bool) -> Dict[str, Any]:
    """What a best checkpoint holds: the classifier weights and what is needed to evaluate them."""
    return {"format": FORMAT, "kind": "weights", "arch": config["model"],
            "linear_probe": bool(config["linear_probe"]), "classes": list(classes),
            "model": model_state, "ema_weights": ema, "epoch": epoch, "metrics": dict(metrics),
            "config": dict(config)}


def training_record(model_state: Dict[str, torch.Tensor], ema_state: Optional[Dict[str, torch.Tensor]],
                    optimizer: torch.optim.Optimizer, scaler: Optional[Any], config: Mapping[str, Any],
                    classes: list, epoch: int, step: int, best: Dict[str, float], metrics_rows: int) -> Dict[str, Any]:
    """The last checkpoint: everything needed to continue the run where it stopped (random streams
    are re-seeded from the seed, rank and epoch on resume rather than restored), and the number of
    ``metrics.jsonl`` rows it covers (a resume cuts the file back to them)."""
    return {"format": FORMAT, "kind": "training", "arch": config["model"],
            "linear_probe": bool(config["linear_probe"]), "classes": list(classes),
            "model": model_state, "ema": ema_state, "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "step": step, "best": dict(best), "config": dict(config), "metrics_rows": metrics_rows}


def check_same_schedule(path: Path, record: Mapping[str, Any], steps_per_epoch: int) -> None:
    """A training checkpoint is written at an epoch's end, so its step is its epochs times its own steps per
    epoch. With another number of steps per epoch (--batch-size, the processes or the training images changed)
    the schedule rebuilt for this run would read that step as another point of it: the lr would fall to its
    floor early, or the warm-up repeat."""
    epochs_done, step = int(record["epoch"]), int(record["step"])
    if epochs_done == 0 or step == epochs_done * steps_per_epoch:
        return
    batch = (record.get("config") or {}).get("batch_size", "?")
    raise CheckpointError(
        f"{path} was written at {step // epochs_done} steps per epoch (--batch-size {batch}), this run has "
        f"{steps_per_epoch}: --batch-size, the number of processes or the training images changed, so its step {step} "
        f"would be another point of the schedule; resume with the same data, processes and --batch-size, or start "
        f"a new run from its weights with --weights {path} and another --output-dir")


def check_epochs_not_passed(path: Path, record: Mapping[str, Any], epochs: int) -> None:
    """A resume with fewer --epochs than the checkpoint has done would train nothing and write a summary and
    config.yaml claiming a run of that length."""
    if int(record["epoch"]) > epochs:
        raise CheckpointError(f"{path} has {record['epoch']} epochs done, more than --epochs {epochs}: resume with "
                              f"--epochs {record['epoch']} or more (or --stop-after-epoch to end earlier next time)")


def save(record: Dict[str, Any], output_dir: Path, name: str) -> Path:
    return save_atomic(on_host(record), Path(output_dir) / name)


def resume_path(resume: Optional[str], output_dir: Path) -> Optional[Path]:
    """``auto``: the run folder's last checkpoint when there is one (else a fresh start);
    a path must exist."""
    if not resume:
        return None
    if resume == "auto":
        candidate = Path(output_dir) / LAST
        if candidate.is_file():
            return candidate
        logger.info("--resume auto: no %s in %s, a fresh start", LAST, output_dir)
        return None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume checkpoint not found: {path}")
    return path


def load_record(path: Path, kind: Optional[str] = None) -> Dict[str, Any]:
    record = load_file(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a spark-finetune checkpoint (pre-trained weights go to "
                              f"--weights, not --resume/--checkpoint)")
    if kind is not None and record.get("kind") != kind:
        raise CheckpointError(f"{path} holds {record.get('kind')}, expected {kind} "
                              f"(resume from {LAST})")
    return record


def network_options(model: str, config: Mapping[str, Any]) -> Dict[str, Any]:
    """The options that decide which tensors the network has (defaults filled in: a checkpoint from before
    an option existed used its default)."""
    return {"model": model, "in_chans": int(config.get("in_chans") or 3),
            "model_kwargs": dict(config.get("model_kwargs") or {}), "linear_probe": bool(config.get("linear_probe"))}


def load_network_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], record: Mapping[str, Any],
                       config: Mapping[str, Any], path: Path) -> None:
    """Load a checkpoint's network weights into the network this run's options built. When they do not fit
    (another --in-chans, --model-kwargs or --linear-probe than the checkpoint was trained with), the error
    names the options that differ instead of torch's list of mis-shaped tensors."""
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        trained = network_options(record["arch"], {**(record.get("config") or {}),
                                                   "linear_probe": record.get("linear_probe")})
        difference = option_difference(trained, network_options(config["model"], config), list(trained))
        if difference is None:
            raise CheckpointError(f"{path} does not fit the network this run builds "
                                  f"({first_line(error)}...)") from error
        raise CheckpointError(f"{path} was trained with {difference[0]}, this run has {difference[1]}; "
                              "give the options it was trained with") from error
