"""Generated stand-ins for real data (tests and ``--smoke``): learnable, class-dependent images."""
from pathlib import Path

import numpy as np

from .data import write_idx


def class_images(num: int, num_classes: int, size: int, rng: np.random.Generator) -> tuple:
    """Grey images whose class sets the orientation and frequency of a stripe pattern, with noise and a
    random phase and contrast, so a CNN can learn the classes but no pixel gives them away."""
    labels = rng.integers(0, num_classes, size=num)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((num, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        angle = np.pi * label / num_classes
        frequency = 2 + label % 3
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * frequency * (np.cos(angle) * xs + np.sin(angle) * ys) + phase)
        pixels = 128 + rng.uniform(40, 100) * wave + rng.normal(0, 20, (size, size))
        images[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_idx_dataset(folder: Path, train: int = 400, test: int = 200, num_classes: int = 10, size: int = 28,
                      seed: int = 0) -> Path:
    """The four Fashion-MNIST file names, gzip'ed IDX, with generated contents."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("t10k", test)):
        images, labels = class_images(count, num_classes, size, rng)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder
