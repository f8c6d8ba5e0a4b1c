"""The value benchmark end to end: SparK pre-training, then SparK and scratch under one evaluation recipe.

Stages (each logged with its wall time):
1. pre-train with ``spark-pretrain`` itself (a child process) on every training image, labels ignored;
2. frozen evaluations of both encoders: weighted kNN and a linear probe on all pool labels;
3. fine-tuning of both on class-balanced label subsets, several seeds (the seed sets the subset and the
   classifier's initialisation, the same for both methods); hyper-parameters chosen on validation only;
4. reconstructions on real test images, the loss curve, then the table, JSON and plot.
"""
import logging
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from sparkmim.utils.distributed import check_cuda_visible, check_device_name

from .data import LabelledData, load_dataset, pretraining_list, resize_uint8
from .evaluators import extract_features, knn_accuracy, linear_probe
from .finetune import evaluate, finetune
from .models import create_classifier
from .presets import Preset
from .report import METHODS, markdown_table, plot_fractions, write_json, write_markdown
from .splits import balanced_subset, carve_validation
from .stats import mean_std, paired_comparison
from .synthetic import write_idx_dataset

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``--device`` as the trainers read it (auto, cuda, cuda:N or cpu); the pre-training it launches gets the
    same device, GPU index included, as the evaluations in this process."""
    check_device_name(name, ValueError)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_cuda_visible(name, ValueError)
    return torch.device(name)


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (f"{platform.machine()} CPU, {torch.get_num_threads()} threads, "
            f"{platform.system()} (torch {torch.__version__})")


def pretraining_command(preset: Preset, listing: Path, run_dir: Path, device: torch.device) -> List[str]:
    """``python -m sparkmim.pretrain`` with the preset's budget, on ``device`` (its GPU index included)."""
    return [sys.executable, "-m", "sparkmim.pretrain", str(listing), "--model", preset.model,
            "--input-size", str(preset.input_size), "--epochs", str(preset.pretrain_epochs),
            "--batch-size", str(preset.pretrain_batch), "--lr", str(preset.pretrain_lr),
            "--warmup-epochs", str(preset.pretrain_warmup_epochs), "--decoder-width", str(preset.decoder_width),
            "--mask-ratio", str(preset.mask_ratio), "--workers", str(preset.pretrain_workers),
            "--amp", preset.amp, "--device", str(device), "--seed", "0", "--output-dir", str(run_dir),
            "--resume", "auto", "--no-progress", "--no-tensorboard", "--num-vis", "8"]


def run_pretraining(preset: Preset, listing: Path, run_dir: Path, device: torch.device) -> Path:
    """The pre-training of :func:`pretraining_command`; resumes (or skips) a finished run in place."""
    command = pretraining_command(preset, listing, run_dir, device)
    logger.info("pre-training: %s", " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"spark-pretrain failed (exit {completed.returncode}); its log is above; rerun the "
                           "same command to resume it")
    from sparkmim.pretrain.checkpointing import encoder_name
    weights = run_dir / encoder_name(preset.model)
    if not weights.is_file():
        raise RuntimeError(f"spark-pretrain finished without writing {weights}")
    return weights


def frozen_evaluations(preset: Preset, data: LabelledData, pool: torch.Tensor, val: torch.Tensor,
                       weights: Dict[str, Optional[Path]], device: torch.device, num_classes: int
                       ) -> Dict[str, Dict[str, Any]]:
    results: Dict[str, Dict[str, Any]] = {}
    for method in METHODS:
        model = create_classifier(preset.model, num_classes, seed=0, encoder_weights=weights[method]).to(device)
        features = {name: extract_features(model, images, device) for name, images in
                    (("pool", data.train.images[pool]), ("val", data.train.images[val]), ("test", data.test.images))}
        labels = {"pool": data.train.labels[pool], "val": data.train.labels[val], "test": data.test.labels}
        knn = {split: knn_accuracy(features["pool"], labels["pool"], features[split], labels[split], k=preset.knn_k)
               for split in ("val", "test")}
        probe = linear_probe(features["pool"], labels["pool"], features["val"], labels["val"], features["test"],
                             labels["test"], preset.probe_weight_decays)
        results[method] = {"knn": knn, "linear": probe, "feature_dim": int(features["pool"].shape[1])}
        logger.info("frozen %-7s kNN %.2f%%  linear probe %.2f%% (weight decay %g)", method, knn["test"],
                    probe["test"], probe["weight_decay"])
    return results


def _finetune_once(preset: Preset, data: LabelledData, subset: torch.Tensor, val: torch.Tensor, fraction: float,
                   lr: float, seed: int, weights: Optional[Path], device: torch.device, num_classes: int,
                   amp_dtype: Optional[torch.dtype]) -> Dict[str, float]:
    model = create_classifier(preset.model, num_classes, seed=seed, encoder_weights=weights).to(device)
    trained = finetune(model, data.train.images[subset], data.train.labels[subset], preset.recipe(fraction, lr),
                       seed=seed, amp_dtype=amp_dtype)
    return {"seed": seed, "lr": lr, "steps": trained["steps"], "last_loss": trained["last_loss"],
            "val": evaluate(model, data.train.images[val], data.train.labels[val]),
            "test": evaluate(model, data.test.images, data.test.labels)}


def finetune_evaluations(preset: Preset, data: LabelledData, pool: torch.Tensor, val: torch.Tensor,
                         weights: Dict[str, Optional[Path]], device: torch.device, num_classes: int
                         ) -> Dict[str, Dict[str, Any]]:
    amp_dtype = torch.bfloat16 if preset.amp == "bf16" and device.type == "cuda" else None
    results: Dict[str, Dict[str, Any]] = {}
    for fraction in preset.fractions:
        subsets = {seed: balanced_subset(data.train.labels, pool, fraction, seed) for seed in preset.seeds}
        entry: Dict[str, Any] = {"labels_per_seed": int(subsets[preset.seeds[0]].numel())}
        for method in METHODS:
            lr_search: Dict[str, float] = {}
            runs: List[Dict[str, float]] = []
            lr = preset.finetune_lrs[0]
            if len(preset.finetune_lrs) > 1:  # same search for both methods, on validation, first seed
                first = preset.seeds[0]
                trials = {lr: _finetune_once(preset, data, subsets[first], val, fraction, lr, first, weights[method],
                                             device, num_classes, amp_dtype) for lr in preset.finetune_lrs}
                lr_search = {str(k): v["val"] for k, v in trials.items()}
                lr = max(trials, key=lambda k: trials[k]["val"])
                runs.append(trials[lr])
            for seed in preset.seeds[len(runs):]:
                runs.append(_finetune_once(preset, data, subsets[seed], val, fraction, lr, seed, weights[method],
                                           device, num_classes, amp_dtype))
            entry[method] = {"lr": lr, "lr_search_val": lr_search, "runs": runs,
                             "test": mean_std([r["test"] for r in runs]), "val": mean_std([r["val"] for r in runs])}
            logger.info("fine-tune %4.0f%% labels %-7s test %.2f ± %.2f (lr %g; per seed %s)", 100 * fraction, method,
                        entry[method]["test"]["mean"], entry[method]["test"]["std"], lr,
                        ", ".join(f"{r['test']:.2f}" for r in runs))
        entry["gain"] = paired_comparison([r["test"] for r in entry["spark"]["runs"]],
                                          [r["test"] for r in entry["scratch"]["runs"]])
        results[str(fraction)] = entry
    return results


def reconstruct_test_images(preset: Preset, data: LabelledData, run_dir: Path, out_path: Path, count: int = 8
                         ) -> Tuple[Path, int]:
    """SparK's reconstructions of the first ``count`` test images (never seen in pre-training), and the
    encoder's total stride (the side of a mask patch)."""
    from sparkmim import build_spark
    from sparkmim.utils.pictures import plot_reconstructions, reconstruct

    from .data import normalise

    spark = build_spark(preset.model, input_size=preset.input_size, mask_ratio=preset.mask_ratio,
                        decoder_width=preset.decoder_width)
    payload = torch.load(run_dir / "checkpoint_last.pth", map_location="cpu", weights_only=False)
    spark.load_state_dict(payload["model"])
    panels = reconstruct(spark, normalise(data.test.images[:count]), seed=0)
    return plot_reconstructions(panels, out_path), spark.downsample_ratio


def prepare_data(preset: Preset, source: Optional[str], out: Path, smoke: bool) -> LabelledData:
    if source is None and smoke:
        source = str(write_idx_dataset(out / "generated_data", *preset.smoke_data))
        logger.info("smoke run: generated %d train and %d test images in %s", *preset.smoke_data, source)
    data = load_dataset(source, preset.input_size)
    data.train.images = resize_uint8(data.train.images, preset.input_size)
    data.test.images = resize_uint8(data.test.images, preset.input_size)
    return data


def run_value_benchmark(preset: Preset, source: Optional[str], out: Path, device_name: str = "auto",
                        smoke: bool = False) -> Dict[str, Any]:
    """Run every stage; write ``results.json``, ``results.md``, ``fractions.png`` and pictures into ``out``."""
    device = resolve_device(device_name)
    out.mkdir(parents=True, exist_ok=True)
    timing: Dict[str, float] = {}
    start = time.perf_counter()
    data = prepare_data(preset, source, out, smoke)
    num_classes = len(data.classes)
    pool, val = carve_validation(data.train.labels, preset.val_fraction, seed=0)
    logger.info("%s: %d training images (%d pool + %d validation), %d test, %d classes, evaluated at %d px",
                data.name, len(data.train), pool.numel(), val.numel(), len(data.test), num_classes, preset.input_size)

    stage = time.perf_counter()
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    pretrain_indices = order[:preset.pretrain_images] if preset.pretrain_images else order.sort().values
    listing = pretraining_list(data, pretrain_indices, out / "pretrain_data")
    run_dir = out / "pretrain"
    weights = {"scratch": None, "spark": run_pretraining(preset, listing, run_dir, device)}
    timing["pretrain"] = time.perf_counter() - stage

    stage = time.perf_counter()
    frozen = frozen_evaluations(preset, data, pool, val, weights, device, num_classes)
    timing["frozen"] = time.perf_counter() - stage

    stage = time.perf_counter()
    tuned = finetune_evaluations(preset, data, pool, val, weights, device, num_classes)
    timing["finetune"] = time.perf_counter() - stage

    reconstructions, stride = reconstruct_test_images(preset, data, run_dir, out / "reconstructions_test.png")
    pictures = {"reconstructions_test": str(reconstructions), "reconstructions_train": str(run_dir / "reconstruction.png")}
    if (run_dir / "loss_curve.png").is_file():
        pictures["loss_curve"] = str(shutil.copy(run_dir / "loss_curve.png", out / "loss_curve.png"))
    timing["total"] = time.perf_counter() - start

    grid = preset.input_size // stride
    results: Dict[str, Any] = {
        "settings": preset.to_dict(), "device": str(device), "machine": describe_machine(device),
        "data": {"name": data.name, "classes": data.classes, "train": len(data.train), "test": len(data.test),
                 "pool": int(pool.numel()), "val": int(val.numel())},
        "pretrain": {"images": int(pretrain_indices.numel()), "mask_grid": f"{grid}x{grid}",
                     "run_dir": str(run_dir), "encoder_weights": str(weights["spark"]),
                     "epoch_losses": _epoch_losses(run_dir / "metrics.jsonl")},
        "frozen": frozen, "finetune": tuned, "timing_s": timing, "pictures": pictures}
    results["pictures"]["fractions"] = str(plot_fractions(results, out / "fractions.png"))
    write_json(results, out / "results.json")
    write_markdown(results, out / "results.md")
    print(markdown_table(results))
    print(f"\nwall time {timing['total'] / 60:.1f} min; outputs in {out.resolve()} "
          "(results.md, results.json, fractions.png, loss_curve.png, reconstructions_test.png)")
    return results


def _epoch_losses(metrics_path: Path) -> List[float]:
    """Mean training loss of each pre-training epoch, from spark-pretrain's metrics file."""
    from sparkmim.utils.metrics import read_rows

    return [float(row["loss_mean"]) for row in read_rows(metrics_path) if row.get("kind") == "epoch"]
