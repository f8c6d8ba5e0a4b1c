"""Helpers shared by the fine-tuning tests: a generated 4-class image folder (solid colours with pixel
noise, so a narrow ResNet-18 learns it in a few epochs on CPU), an encoder checkpoint and a tiny recipe."""
from pathlib import Path
from typing import List

import numpy as np
import timm
import torch
import yaml
from PIL import Image

from sparkmim.utils.synthetic import noisy_colour

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "yellow": (230, 220, 30)}
MODEL_KWARGS = {"channels": [8, 16, 32, 64]}
RECIPE = {  # tiny but exercising layer decay, EMA and drop path; no strong augmentation
    "model_kwargs": MODEL_KWARGS, "input_size": 32, "batch_size": 16, "epochs": 6, "warmup_epochs": 1,
    "opt": "adamw", "base_lr": 0.05, "layer_decay": 0.7, "weight_decay": 0.05, "mixup": 0.0,
    "cutmix": 0.0, "repeated_aug": 0, "drop_path": 0.05, "ema": 0.9, "auto_augment": "none",
    "reprob": 0.0, "train_scale": [0.5, 1.0], "workers": 0, "progress": False, "device": "cpu",
}


def write_images(root: Path, per_class: int, rng: np.random.Generator) -> None:
    for name, colour in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            Image.fromarray(noisy_colour(colour, 40, rng)).save(folder / f"{index}.png")


def make_workspace(root: Path) -> Path:
    """Data (train/val, one corrupt training file), an encoder-only checkpoint and a recipe file in ``root``."""
    rng = np.random.default_rng(0)
    write_images(root / "data" / "train", 12, rng)
    write_images(root / "data" / "val", 6, rng)
    (root / "data" / "train" / "red" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    torch.manual_seed(0)
    encoder = timm.create_model("resnet18", num_classes=0, global_pool="", **MODEL_KWARGS)
    torch.save(encoder.state_dict(), root / "encoder.pth")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    return root


def common_args(workspace: Path, out: Path, recipe: bool = True) -> List[str]:
    args = ["--model", "resnet18", "--data", str(workspace / "data"), "--weights", str(workspace / "encoder.pth"),
            "--output-dir", str(out)]
    return args + (["--recipe", str(workspace / "recipe.yaml")] if recipe else [])
