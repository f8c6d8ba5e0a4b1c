"""Helpers shared by the pre-training tests: tiny image folders, running the real command, reading
its metrics. Runs use timm's ``test_resnet`` (0.4 M parameters) at 64 px so that they take seconds."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from sparkmim.utils import metrics
from sparkmim.utils.synthetic import smooth_waves

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_ARGS = ["--model", "test_resnet", "--input-size", "64", "--batch-size", "8", "--decoder-width", "32",
             "--warmup-epochs", "1", "--lr", "0.002", "--workers", "0", "--num-vis", "2", "--no-progress"]


def make_images(folder: Path, count: int, size: int = 72, seed: int = 0) -> Path:
    """Smooth random images (learnable, unlike white noise) in two sub-folders, like a labelled set."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        sub = folder / ("class_a" if index % 2 else "class_b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_waves(rng, size)).save(sub / f"{index:03d}.png")
    return folder


def command(args: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "sparkmim.pretrain", *args]


def environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def run_cli(args: Sequence[str], timeout: float = 300, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``python -m sparkmim.pretrain`` to completion (the same code as ``spark-pretrain``)."""
    return subprocess.run(command(args), cwd=REPO_ROOT, env=environment(env), capture_output=True, text=True,
                          timeout=timeout)


def start_cli(args: Sequence[str], log_path: Path, env: Optional[Dict[str, str]] = None,
              own_group: bool = False) -> subprocess.Popen:
    """Start the command; ``own_group``: in a process group of its own, which a scheduler signals as a whole."""
    handle = open(log_path, "w")
    return subprocess.Popen(command(args), cwd=REPO_ROOT, env=environment(env), stdout=handle,
                            stderr=subprocess.STDOUT, text=True, start_new_session=own_group)


def read_rows(metrics_path: Path, kind: str) -> List[dict]:
    """The rows of one kind (``step``, ``epoch``); a line cut short by a kill is skipped."""
    return [row for row in metrics.read_rows(metrics_path) if row.get("kind") == kind]


def step_losses(metrics_path: Path) -> Dict[int, float]:
    """step -> loss; a step logged twice (redone after a crash) keeps its last value."""
    return {int(row["step"]): float(row["loss"]) for row in read_rows(metrics_path, "step")}


def jpeg_folder(folder: Path, count: int) -> List[Path]:
    """The shared smooth test images, re-encoded as JPEGs of varied shapes (some greyscale), for the
    device-decoding tests."""
    from sparkmim.pretrain.data import list_images

    make_images(folder, count, size=80)
    for index, png in enumerate(sorted(folder.rglob("*.png"))):
        with Image.open(png) as image:
            image = image.resize((80 + 16 * (index % 3), 64 + 24 * (index % 2)))
            (image.convert("L") if index % 4 == 3 else image).save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    return list_images(str(folder))


BAND_MEANS = 1000.0 * (1 + np.arange(5))  # five bands at very different levels, as satellite bands are


def pretrain_one_epoch(data: Path, out: Path, in_chans: int) -> Path:
    """One tiny pre-training epoch of ``data`` into the run folder ``out``, read with its own values
    (``--in-chans``, statistics from the data)."""
    done = run_cli([str(data), *TINY_ARGS, "--epochs", "1", "--in-chans", str(in_chans), "--norm-stats", "auto",
                    "--output-dir", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def pretrain_multiband(root: Path, count: int = 8) -> Path:
    """``count`` 5-band ``.npy`` images in ``root/bands``, pre-trained for one tiny epoch into ``root/run``
    (--in-chans 5, statistics from the data)."""
    rng = np.random.default_rng(0)
    (root / "bands").mkdir(parents=True)
    for index in range(count):
        np.save(root / "bands" / f"{index}.npy", rng.normal(BAND_MEANS, 50.0, (72, 72, 5)).astype(np.float32))
    return pretrain_one_epoch(root / "bands", root / "run", 5)
