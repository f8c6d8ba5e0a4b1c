"""Tar shards for the shard tests, packed by the real ``spark-data pack`` code from real image files.

Images can be told apart after augmentation: image ``i`` is one flat grey level ``LEVELS[i]`` (a crop,
resize or flip of a flat image is flat), so the id of every sample a loader yields can be read back
from its pixels (:func:`ids_of`)."""
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from PIL import Image

from sparkmim.pretrain.data import IMAGENET_MEAN, IMAGENET_STD
from sparkmim.tools.data import pack_shards

LEVELS = 250  # flat images 0..249 have the grey levels 0..249


def write_flat_images(folder: Path, count: int, size: int = 40) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:04d}.png"
        Image.fromarray(np.full((size, size, 3), index % LEVELS, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def pack_flat(root: Path, count: int, shard_size: int) -> Path:
    """``count`` flat images packed into shards of ``shard_size`` under ``root/shards``."""
    paths = write_flat_images(root / "images", count)
    pack_shards(paths, root / "shards", shard_size=shard_size, source=str(root / "images"))
    return root / "shards"


def ids_of(images: torch.Tensor) -> List[int]:
    """The grey level (= image id) of each normalised RGB tensor in a batch."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    levels = (images * std + mean) * 255
    return [int(round(float(level))) for level in levels.mean(dim=(1, 2, 3))]


def shard_pattern(folder: Path, count: int) -> str:
    return str(folder / (f"train-{{000000..{count - 1:06d}}}.tar"))


def all_ids(counts: Sequence[int]) -> set:
    return set(range(sum(counts)))
