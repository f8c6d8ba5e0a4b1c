"""Kill trials: SIGKILL a real trainer at random moments, resume it, and compare everything it leaves
with an uninterrupted run of the same command.

Per trial: one run killed after a random delay (anywhere from start-up to the end, checkpoint writes
included), then ``--resume auto`` to the end. Counted: checkpoints that do not load after the kill,
resumes that fail, metric rows duplicated or missing, epoch summaries that differ from the
uninterrupted run's, final weights that differ, temporary files left behind. All are expected 0.
"""
import abc
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from PIL import Image

from sparkmim.utils.checkpoint import load_file
from sparkmim.utils.metrics import read_rows
from sparkmim.utils.synthetic import noisy_colour, smooth_waves

logger = logging.getLogger(__name__)

TRAINERS = ("pretrain", "finetune")
COLOURS = ((30, 40, 220), (30, 200, 40), (220, 30, 30), (230, 220, 30))


@dataclass
class TrialConfig:
    work_dir: Path
    trainer: str = "pretrain"
    trials: int = 12
    seed: int = 0
    epochs: int = 6


@dataclass
class TrialResult:
    trial: int
    kill_after_s: float
    steps_logged_at_kill: int
    checkpoint_step_at_kill: Optional[int]   # None: no checkpoint yet
    temporary_files_at_kill: int             # > 0: the kill fell in a checkpoint write
    corrupt_checkpoint: bool
    resume_failed: bool
    duplicated_rows: int
    missing_rows: int
    summary_mismatches: int
    max_weight_difference: float             # final weights against the uninterrupted run's (0: bit-identical)
    weights_differ: bool
    temporary_files_left: int
    notes: List[str] = field(default_factory=list)


def _environment() -> Dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Trainer(abc.ABC):
    """One trainer's command, data and records, as the trials need them."""

    module: str
    step_kind: str   # the metrics rows that must appear once per step

    def __init__(self, work_dir: Path, epochs: int) -> None:
        self.work_dir, self.epochs = work_dir, epochs

    @abc.abstractmethod
    def prepare(self) -> None:
        """Write the data (once per work folder)."""

    @abc.abstractmethod
    def args(self, run_dir: Path) -> List[str]:
        """The command's arguments for a run in ``run_dir``."""

    @abc.abstractmethod
    def summaries(self, run_dir: Path) -> List[tuple]:
        """The epoch rows' figures that a resumed run must reproduce."""

    def command(self, run_dir: Path, resume: bool) -> List[str]:
        return [sys.executable, "-m", self.module, *self.args(run_dir), *(["--resume", "auto"] if resume else [])]


class PretrainTrainer(Trainer):
    """spark-pretrain on 52 smooth images and 4 corrupt files: 7 steps per epoch, a skipped count every epoch."""

    module, step_kind = "sparkmim.pretrain", "step"

    def prepare(self) -> None:
        data = self.work_dir / "pretrain_data"
        if data.is_dir():
            return
        rng = np.random.default_rng(0)
        data.mkdir(parents=True)
        for index in range(52):
            Image.fromarray(smooth_waves(rng, 72)).save(data / f"{index:03d}.png")
        for index in range(4):
            (data / f"corrupt_{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")

    def args(self, run_dir: Path) -> List[str]:
        return [str(self.work_dir / "pretrain_data"), "--model", "test_resnet", "--input-size", "64", "--batch-size",
                "8", "--decoder-width", "32", "--warmup-epochs", "1", "--lr", "0.002", "--workers", "1",
                "--num-vis", "0", "--no-progress", "--log-interval", "1", "--seed", "3", "--epochs",
                str(self.epochs), "--output-dir", str(run_dir)]

    def summaries(self, run_dir: Path) -> List[tuple]:
        return [(row["epoch"], row["loss_mean"], row["skipped_images"]) for row in read_rows(run_dir / "metrics.jsonl")
                if row.get("kind") == "epoch"]


class FinetuneTrainer(Trainer):
    """spark-finetune of a narrow ResNet-18 on four noisy colours (48 training images, one corrupt)."""

    module, step_kind = "sparkmim.downstream_imagenet", "train_step"

    def prepare(self) -> None:
        data = self.work_dir / "finetune_data"
        if data.is_dir():
            return
        rng = np.random.default_rng(0)
        for split, count in (("train", 12), ("val", 6)):
            for label, colour in enumerate(COLOURS):
                folder = data / split / f"class_{label}"
                folder.mkdir(parents=True)
                for index in range(count):
                    Image.fromarray(noisy_colour(colour, 40, rng)).save(folder / f"{index}.png")
        (data / "train" / "class_0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        recipe = {"model_kwargs": {"channels": [8, 16, 32, 64]}, "input_size": 32, "batch_size": 16,
                  "warmup_epochs": 1, "opt": "adamw", "base_lr": 0.05, "layer_decay": 0.7, "weight_decay": 0.05,
                  "mixup": 0.0, "cutmix": 0.0, "repeated_aug": 0, "drop_path": 0.05, "ema": 0.9,
                  "auto_augment": "none", "reprob": 0.0, "workers": 0, "progress": False, "device": "cpu",
                  "log_interval": 1}
        (self.work_dir / "finetune_recipe.yaml").write_text(yaml.safe_dump(recipe))

    def args(self, run_dir: Path) -> List[str]:
        return ["--model", "resnet18", "--data", str(self.work_dir / "finetune_data"), "--recipe",
                str(self.work_dir / "finetune_recipe.yaml"), "--epochs", str(self.epochs), "--output-dir", str(run_dir)]

    def summaries(self, run_dir: Path) -> List[tuple]:
        return [(row["epoch"], row["train_loss"], row["val_top1"], row["train_skipped"])
                for row in read_rows(run_dir / "metrics.jsonl") if row.get("kind") == "epoch"]


def make_trainer(name: str, work_dir: Path, epochs: int) -> Trainer:
    return {"pretrain": PretrainTrainer, "finetune": FinetuneTrainer}[name](work_dir, epochs)


def _run(command: Sequence[str], log: Path) -> int:
    with open(log, "a") as handle:
        return subprocess.run(list(command), env=_environment(), stdout=handle, stderr=subprocess.STDOUT).returncode


def _step_counts(trainer: Trainer, run_dir: Path) -> Counter:
    return Counter(row["step"] for row in read_rows(run_dir / "metrics.jsonl") if row.get("kind") == trainer.step_kind)


def _same_summary(got: tuple, expected: tuple) -> bool:
    return len(got) == len(expected) and all(
        a == b if isinstance(a, int) else abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(got, expected))


def _max_weight_difference(first: Path, second: Path) -> float:
    a, b = load_file(first)["model"], load_file(second)["model"]
    if a.keys() != b.keys():
        return float("inf")
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()),
               default=0.0)


def time_reference(trainer: Trainer, run_dir: Path, log: Path) -> Tuple[float, float, float]:
    """Run the uninterrupted reference: seconds until its first step row, until the last checkpoint was
    written, and until the process ended."""
    started, first_step, last_save, last_mtime = time.time(), None, None, None
    checkpoint = run_dir / "checkpoint_last.pth"
    with open(log, "w") as handle:
        process = subprocess.Popen(trainer.command(run_dir, resume=False), env=_environment(), stdout=handle,
                                   stderr=subprocess.STDOUT)
        while process.poll() is None:
            if first_step is None and run_dir.is_dir() and _step_counts(trainer, run_dir):
                first_step = time.time() - started
            if checkpoint.is_file() and checkpoint.stat().st_mtime != last_mtime:
                last_mtime, last_save = checkpoint.stat().st_mtime, time.time() - started
            time.sleep(0.02)
    if process.returncode != 0:
        raise RuntimeError(f"the uninterrupted reference run failed: see {log}")
    duration = time.time() - started
    first_step = first_step if first_step is not None else 0.1 * duration
    return first_step, (last_save if last_save is not None else duration), duration


def run_trial(trainer: Trainer, index: int, delay: float, reference: Path, reference_steps: Counter) -> TrialResult:
    run_dir = trainer.work_dir / f"trial_{index:02d}"
    shutil.rmtree(run_dir, ignore_errors=True)
    log = trainer.work_dir / f"trial_{index:02d}.log"
    log.unlink(missing_ok=True)
    with open(log, "w") as handle:
        process = subprocess.Popen(trainer.command(run_dir, resume=False), env=_environment(), stdout=handle,
                                   stderr=subprocess.STDOUT)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
    notes: List[str] = []
    logged = sum(_step_counts(trainer, run_dir).values()) if run_dir.is_dir() else 0
    temporaries = len(list(run_dir.glob(".*.tmp"))) if run_dir.is_dir() else 0
    checkpoint, saved_step, corrupt = run_dir / "checkpoint_last.pth", None, False
    if checkpoint.is_file():
        try:
            saved_step = int(load_file(checkpoint)["step"])
        except Exception as error:  # the figure this benchmark exists to count
            corrupt = True
            notes.append(f"checkpoint unreadable after the kill: {type(error).__name__}: {error}")
    resume_failed = _run(trainer.command(run_dir, resume=True), log) != 0
    if resume_failed:
        notes.append(f"resume failed: see {log}")
    steps = _step_counts(trainer, run_dir)
    got, expected = trainer.summaries(run_dir), trainer.summaries(reference)
    mismatches = sum(not _same_summary(g, e) for g, e in zip(got, expected)) + abs(len(got) - len(expected))
    difference = float("inf") if resume_failed else _max_weight_difference(checkpoint, reference / "checkpoint_last.pth")
    return TrialResult(
        trial=index, kill_after_s=round(delay, 2), steps_logged_at_kill=logged, checkpoint_step_at_kill=saved_step,
        temporary_files_at_kill=temporaries, corrupt_checkpoint=corrupt, resume_failed=resume_failed,
        duplicated_rows=sum(n - 1 for n in steps.values() if n > 1),
        missing_rows=sum(1 for step in reference_steps if step not in steps),
        summary_mismatches=mismatches, max_weight_difference=difference, weights_differ=difference > 0.0,
        temporary_files_left=len(list(run_dir.glob(".*.tmp"))), notes=notes)


def run_kill_trials(config: TrialConfig) -> Dict[str, Any]:
    """The reference run, then ``config.trials`` kill-and-resume trials at random moments within its duration."""
    config.work_dir.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer(config.trainer, config.work_dir, config.epochs)
    trainer.prepare()
    reference = config.work_dir / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    first_step, last_save, duration = time_reference(trainer, reference, config.work_dir / "reference.log")
    reference_steps = _step_counts(trainer, reference)
    logger.info("reference run: %.1f s, %d steps, the first logged after %.1f s, the last save after %.1f s",
                duration, len(reference_steps), first_step, last_save)
    rng = random.Random(config.seed)
    results = []
    for index in range(config.trials):
        # anywhere from the first step to the last save (start-up and the final pictures would test little)
        delay = rng.uniform(first_step, last_save)
        result = run_trial(trainer, index, delay, reference, reference_steps)
        logger.info("trial %d: killed after %.1f s (%d steps logged, checkpoint at step %s); %s", index, delay,
                    result.steps_logged_at_kill, result.checkpoint_step_at_kill,
                    "ok" if _clean(result) else "PROBLEM: " + "; ".join(result.notes or ["see the table"]))
        results.append(result)
    report = {"trainer": config.trainer, "trials": config.trials, "seed": config.seed,
              "reference_seconds": round(duration, 1), "kill_window_s": [round(first_step, 1), round(last_save, 1)], "reference_steps": len(reference_steps),
              "torch": torch.__version__, "results": [asdict(r) for r in results]}
    (config.work_dir / "kill_trials.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _clean(result: TrialResult) -> bool:
    return not (result.corrupt_checkpoint or result.resume_failed or result.duplicated_rows or result.missing_rows
                or result.summary_mismatches or result.weights_differ or result.temporary_files_left)


COUNTED = (("corrupt checkpoints", "corrupt_checkpoint"), ("failed resumes", "resume_failed"),
           ("duplicated metric rows", "duplicated_rows"), ("missing metric rows", "missing_rows"),
           ("epoch summary mismatches", "summary_mismatches"), ("final weights differ", "weights_differ"),
           ("temporary files left", "temporary_files_left"))


def format_kill_trials(report: Dict[str, Any]) -> str:
    results = report["results"]
    lines = [f"kill trials, spark-{report['trainer']}: {report['trials']} SIGKILLs at random moments, each followed "
             f"by --resume auto (reference run {report['reference_seconds']} s, {report['reference_steps']} steps; kills "
             f"drawn uniformly from {report['kill_window_s'][0]} s to {report['kill_window_s'][1]} s, its first step "
             f"to its last save; "
             f"torch {report['torch']})", "",
             "| trial | killed after (s) | steps logged | checkpoint step at kill | temp files at kill | clean |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['trial']} | {r['kill_after_s']} | {r['steps_logged_at_kill']} | "
                     f"{r['checkpoint_step_at_kill'] if r['checkpoint_step_at_kill'] is not None else 'none'} | "
                     f"{r['temporary_files_at_kill']} | "
                     f"{'yes' if _clean(TrialResult(**r)) else 'NO'} |")
    lines += ["", "| counted over all trials | total |", "|---|---|"]
    lines += [f"| {title} | {sum(int(r[key]) for r in results)} |" for title, key in COUNTED]
    return "\n".join(lines)


def all_clean(report: Dict[str, Any]) -> bool:
    return all(_clean(TrialResult(**r)) for r in report["results"])
