"""Generated stand-ins for real data (tests and ``--smoke``): Fashion-MNIST's IDX files with learnable,
class-dependent images (:func:`sparkmim.utils.synthetic.class_stripes`)."""
from pathlib import Path

import numpy as np

from sparkmim.utils.synthetic import class_stripes

from .data import write_idx


def write_idx_dataset(folder: Path, train: int = 400, test: int = 200, num_classes: int = 10, size: int = 28,
                      seed: int = 0) -> Path:
    """The four Fashion-MNIST file names, gzip'ed IDX, with generated contents."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, num_classes, size=count)
        images = np.stack([class_stripes(int(label), num_classes, size, rng) for label in labels])
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return folder
