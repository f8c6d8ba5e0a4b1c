"""Pre-training checkpoints: the full resumable state, the encoder-only export, and RNG state.

Layout of the full checkpoint (``format: sparkmim-pretrain``): ``model`` (SparK state dict),
``optimizer``, ``scaler``, ``epoch``, ``step`` (optimizer steps done), ``rng`` (every rank's RNG
states), ``sampler`` (position in the data order), ``config`` (the resolved configuration),
``metrics_rows`` (rows in ``metrics.jsonl`` when it was saved) and ``epoch_progress`` (the unfinished
epoch's step losses and unreadable-file count, so its summary after a resume covers the whole epoch).
Everything is written with :func:`sparkmim.utils.checkpoint.save_atomic`, so a crash mid-write leaves
the previous file in place, and holds CPU tensors only, so a file written on a GPU loads on any machine.
"""
import logging
import random
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from sparkmim.utils.checkpoint import UnsafeCheckpointError, load_file, on_host, save_atomic
from sparkmim.utils.config import option_difference
from sparkmim.utils.errors import UserError, first_line

from .optim import without_frozen_parameters

logger = logging.getLogger(__name__)

FORMAT = "sparkmim-pretrain"
LAST_NAME = "checkpoint_last.pth"


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be used for this run (another model, not ours, unreadable)."""


def encoder_name(model: str) -> str:
    """``<model>_encoder_timm.pth``; a custom CNN given as ``package.module:factory`` is named by its factory."""
    return f"{model.rsplit(':', 1)[-1]}_encoder_timm.pth"


def rng_state() -> Dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU and, when present, CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state_to_plain(state: tuple) -> list:
    """numpy's state tuple holds an ndarray; store it as a tensor so weights-only loading accepts it."""
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's RNG state, in rank order (collective when distributed)."""
    state = rng_state()
    plain = {"python": [state["python"][0], list(state["python"][1]), state["python"][2]],
             "numpy": _numpy_state_to_plain(state["numpy"]), "torch": state["torch"]}
    if "cuda" in state:
        plain["cuda"] = state["cuda"]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: List[Optional[Dict[str, Any]]] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                          for k, v in plain.items()})
        return [g for g in gathered if g is not None]
    return [plain]


def restore_rng_state(states: List[Dict[str, Any]], rank: int) -> bool:
    """Restore this rank's saved RNG state; False when the checkpoint has no state for this rank
    (a different number of processes), in which case resume is not bit-exact."""
    if rank >= len(states):
        return False
    state = states[rank]
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
    return True


@dataclass
class RunProgress:
    """What a checkpoint records besides the training state, so a resumed run's records continue exactly:
    the rows of ``metrics.jsonl`` it covers, and the unfinished epoch's accumulators."""

    metrics_rows: Optional[int] = None      # None: not recorded (a checkpoint of an older version)
    epoch_losses: List[float] = field(default_factory=list)
    epoch_skipped: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return {"metrics_rows": self.metrics_rows,
                "epoch_progress": {"losses": list(self.epoch_losses), "skipped": int(self.epoch_skipped)}}

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any]) -> "RunProgress":
        epoch = payload.get("epoch_progress") or {}
        return cls(metrics_rows=payload.get("metrics_rows"), epoch_losses=[float(v) for v in epoch.get("losses", [])],
                   epoch_skipped=int(epoch.get("skipped", 0)))


@dataclass
class ResumeState:
    """Where a run starts: steps done, every rank's saved RNG states (None: seed afresh), the progress records,
    the data position record (``sampler``: seed, steps per epoch, data streams, ...)."""

    step: int = 0
    rng: Optional[List[Dict[str, Any]]] = None
    progress: RunProgress = field(default_factory=lambda: RunProgress(metrics_rows=0))
    sampler: Dict[str, Any] = field(default_factory=dict)


def save_full(path: Path, *, model_state: Dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
              scaler: Optional[Any], epoch: int, step: int, rng: List[Dict[str, Any]],
              sampler: Dict[str, Any], config: Mapping[str, Any], progress: RunProgress) -> Path:
    payload = {
        "format": FORMAT, "model": model_state, "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch, "step": step, "rng": rng, "sampler": sampler, "config": dict(config),
        **progress.as_dict(),
    }
    return save_atomic(on_host(payload), path)


def save_encoder(path: Path, encoder_state: Dict[str, torch.Tensor]) -> Path:
    """Plain timm state dict of the encoder (no head): ``timm.create_model(name).load_state_dict(sd,
    strict=False)`` reports only the classifier missing."""
    return save_atomic(on_host(encoder_state), path)


def find_resume(resume: Optional[str], output_dir: Path) -> Optional[Path]:
    """``auto`` -> the run folder's last checkpoint if there is one (temporary files from an
    interrupted write are never considered); a path -> that file, which must exist."""
    if not resume:
        return None
    if resume == "auto":
        candidate = output_dir / LAST_NAME
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: file not found; give a checkpoint written by "
                              f"spark-pretrain ({LAST_NAME}) or 'auto'")
    return path


def load_full(path: Path, model_name: str, allow_unsafe: bool = False) -> Dict[str, Any]:
    """Load a resumable checkpoint and check that it belongs to ``model_name``."""
    try:
        payload = load_file(path, allow_unsafe=allow_unsafe)
    except UnsafeCheckpointError as error:
        raise CheckpointError(str(error)) from error
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(error).__name__}: {error}); "
                              "it may be damaged: resume from another file or start afresh") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a spark-pretrain checkpoint (use --init-weight to start "
                              "from other weights)")
    saved_model = (payload.get("config") or {}).get("model")
    if saved_model != model_name:
        raise CheckpointError(f"{path} is a checkpoint of model '{saved_model}', but this run builds "
                              f"'{model_name}'; pass --model {saved_model} or another checkpoint")
    return payload


# options that change neither the model nor the run's mathematics (norm_kernel: the same computation)
NOT_COMPARED_ON_RESUME = frozenset({"resume", "output_dir", "init_weight", "progress", "workers", "epochs", "recipe",
                                    "norm_kernel"})


def changed_options(saved: Mapping[str, Any], current: Mapping[str, Any], keys: Sequence[str]) -> Optional[Tuple[str, str]]:
    """The options of ``keys`` a resumed run changed, as (the checkpoint's flags, this run's flags), or None."""
    return option_difference(saved, current, [key for key in keys if key not in NOT_COMPARED_ON_RESUME])


def resume_into(config: Mapping[str, Any], run_dir: Path, spark: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scaler: Optional[Any], steps_per_epoch: int, option_keys: Sequence[str]) -> ResumeState:
    """Load ``--resume`` (a path, or ``auto``) into the model, optimizer and scaler; returns where the
    run continues (step 0, no RNG states and no metrics rows for a fresh start)."""
    path = find_resume(config["resume"], run_dir)
    if path is None:
        if config["resume"] == "auto":
            logger.info("--resume auto: no checkpoint in %s yet, starting from scratch", run_dir)
        return ResumeState()
    payload = load_full(path, config["model"], bool(config["allow_unsafe_load"]))
    check_same_schedule(path, payload, steps_per_epoch)
    changed = changed_options(payload.get("config") or {}, config, option_keys)
    check_model_state(spark, payload["model"], f"{path} does not fit this model",
                      "resume with the options of the original run" + (f" (it has {changed[0]}, this run {changed[1]})"
                                                                        if changed else ""))
    try:
        spark.load_state_dict(payload["model"])
        optimizer.load_state_dict(without_frozen_parameters(payload["optimizer"], spark))
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} does not fit this model or optimizer ({first_line(error)}); "
                              "resume with the options of the original run") from error
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    start_step = int(payload["step"])
    if changed:
        logger.warning("options changed since the checkpoint was written: it has %s, this run %s", *changed)
    logger.info("resumed from %s: epoch %d, step %d", path, start_step // steps_per_epoch, start_step)
    return ResumeState(step=start_step, rng=payload.get("rng"), progress=RunProgress.from_checkpoint(payload),
                       sampler=dict(payload.get("sampler") or {}))


def check_model_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, advice: str) -> None:
    """:func:`sparkmim.convert.loading.check_state_dict` (the keys that differ, by name, at most 4 of each
    kind), as the trainer's one-line checkpoint error."""
    from sparkmim.convert import KeyAccountingError
    from sparkmim.convert.loading import check_state_dict

    try:
        check_state_dict(model, state, what, advice, limit=4)
    except KeyAccountingError as error:
        raise CheckpointError(str(error)) from None


def check_same_schedule(path: Path, payload: Mapping[str, Any], steps_per_epoch: int) -> None:
    """A checkpoint's step counts steps of its own epochs: with another number of steps per epoch (the data's
    image count or --batch-size changed) it would name another place in the schedule, or one past its end."""
    sampler = payload.get("sampler") or {}
    saved = sampler.get("steps_per_epoch")
    if saved is None or int(saved) == steps_per_epoch:
        return
    raise CheckpointError(
        f"{path} was written at {saved} steps per epoch ({sampler.get('num_images', '?')} images, global batch "
        f"{sampler.get('global_batch', '?')}), this run has {steps_per_epoch}: the data's image count or "
        f"--batch-size changed, so its step {payload.get('step')} would be another point of the schedule; resume "
        f"with the same data and --batch-size, or start a new schedule from its weights with --init-weight {path} "
        "and another --output-dir")


@dataclass
class RunSaver:
    """``saver(step_done, progress)`` writes the full checkpoint and the encoder export (main process),
    every rank contributing its RNG state; called by the loop at epoch ends and on a stop signal."""

    full_path: Path
    encoder_path: Path
    spark: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Optional[Any]
    config: Mapping[str, Any]
    sampler_info: Dict[str, Any]
    is_main: bool
    barrier: Callable[[], None]

    def __call__(self, step_done: int, progress: RunProgress) -> Path:
        rng = gather_rng_states()
        if self.is_main:
            steps_per_epoch = int(self.sampler_info["steps_per_epoch"])
            save_full(self.full_path, model_state=self.spark.state_dict(), optimizer=self.optimizer,
                      scaler=self.scaler, epoch=step_done // steps_per_epoch, step=step_done, rng=rng,
                      sampler={**self.sampler_info, "step": step_done}, config=self.config, progress=progress)
            save_encoder(self.encoder_path, self.spark.encoder.model.state_dict())
        self.barrier()
        return self.full_path
