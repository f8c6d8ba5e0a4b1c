"""Part 6: ``spark-finetune`` on the device, the path users take after pre-training.

The built-in ResNet-50 recipe (LAMB, binary cross-entropy, Mixup, TrivialAugment, drop path, EMA,
layer-wise lr decay) in bf16 autocast with the device's default layout (channels_last on CUDA), on a
generated two-class image folder, from an encoder file: one epoch stopped with ``--stop-after-epoch``,
``--resume auto`` to the second, then ``--eval-only`` of the best checkpoint, which must print the
top-1 the training recorded for it. No test covers these on a GPU; the CPU tests cover the same
commands' arithmetic (exact resume included)."""
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Dict, List

import yaml

from .options import CheckOptions
from ..process_output import last_line, run_child
from .results import PartResult

EPOCHS = 2


def _sizes(quick: bool) -> Dict[str, object]:
    """The run's scale: ResNet-50 at 224 px on a GPU; a narrow ResNet-50 at 32 px on a small CPU."""
    if quick:
        return dict(per_class=16, image_size=40, model_kwargs={"channels": [8, 16, 32, 64]}, args=[
            "--input-size", "32", "--batch-size", "16", "--workers", "1"])
    return dict(per_class=128, image_size=96, model_kwargs={}, args=[
        "--input-size", "224", "--batch-size", "128", "--workers", "8"])


def _finetune(*args: str) -> List[str]:
    return [sys.executable, "-m", "sparkmim.downstream_imagenet", *args]


def _write_encoder(path: Path, model_kwargs: Dict[str, object]) -> Path:
    """A ResNet-50 encoder file as spark-pretrain exports one (timm keys, no classifier), freshly initialised."""
    import timm
    import torch

    torch.manual_seed(0)
    encoder = timm.create_model("resnet50", num_classes=0, global_pool="", **model_kwargs)
    torch.save(encoder.state_dict(), path)
    return path


def _epoch_rows(run_dir: Path) -> List[Dict[str, object]]:
    from sparkmim.utils.metrics import read_rows

    return [row for row in read_rows(run_dir / "metrics.jsonl") if row.get("kind") == "epoch"]


def run(options: CheckOptions, result: PartResult) -> None:
    from sparkmim.tools.smoke_data import write_imagefolder

    sizes = _sizes(options.quick)
    data = write_imagefolder(options.scratch_dir / "finetune_data", sizes["per_class"], sizes["image_size"], seed=0)
    encoder = _write_encoder(options.scratch_dir / "encoder.pth", sizes["model_kwargs"])
    run_dir = options.scratch_dir / "finetune_run"
    common = ["--model", "resnet50", "--data", str(data), "--weights", str(encoder), "--output-dir", str(run_dir),
              "--device", options.device, "--amp", "bf16", "--epochs", str(EPOCHS), "--warmup-epochs", "1",
              "--no-progress", *sizes["args"]]
    if sizes["model_kwargs"]:
        common += ["--model-kwargs", json.dumps(sizes["model_kwargs"])]
    seconds = {}
    for name, extra in (("first epoch", ["--stop-after-epoch", "1"]), ("resumed", ["--resume", "auto"])):
        tick = time.monotonic()
        done = run_child(_finetune(*common, *extra), timeout=options.seconds_left())
        seconds[name] = round(time.monotonic() - tick, 1)
        if done.returncode != 0:
            result.add(f"spark-finetune, {name}", False, f"exit {done.returncode}: {last_line(done.stderr)}")
            return
    rows = _epoch_rows(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    layout = "channels_last" if config["channels_last"] else "contiguous"  # resolved for the device when saved
    result.figures["finetune"] = {"epochs": rows, "seconds": seconds, "layout": layout}
    losses = [float(row["train_loss"]) for row in rows]
    result.add(f"spark-finetune (ResNet-50 recipe, bf16, {layout}): one epoch, then --resume auto to the second",
               [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1)) and all(map(math.isfinite, losses)),
               f"epochs {[row['epoch'] for row in rows]}, train losses {', '.join(f'{v:.4f}' for v in losses)}, "
               f"val top-1 {', '.join(str(row['val_top1']) for row in rows)}; {seconds['first epoch']} s and "
               f"{seconds['resumed']} s per command")
    summary = json.loads((run_dir / "summary.json").read_text())
    tick = time.monotonic()
    done = run_child(_finetune("--eval-only", "--checkpoint", str(run_dir / "checkpoint_best.pth"), "--data", str(data),
                               "--device", options.device), timeout=options.seconds_left())
    name = "spark-finetune --eval-only of the best checkpoint prints the top-1 its training recorded"
    if done.returncode != 0:
        result.add(name, False, f"exit {done.returncode}: {last_line(done.stderr)}")
        return
    shown = re.search(r"top-1 (\d+\.\d\d)", done.stdout or "")
    printed, expected = shown.group(1) if shown else "nothing", f"{summary['best_top1']:.2f}"
    result.add(name, printed == expected, f"printed {printed}, recorded {expected} ({time.monotonic() - tick:.1f} s)")
