"""Tiny generated datasets for the pipelines' smoke mode (``--smoke``), in the real on-disk layouts.

``python -m sparkmim.tools.smoke_data images=DIR``       a folder of images (pre-training)
``python -m sparkmim.tools.smoke_data imagefolder=DIR``  DIR/train/<class>/, DIR/val/<class>/ (ImageNet layout)
``python -m sparkmim.tools.smoke_data coco=DIR``         DIR/annotations/instances_{train,val}2017.json,
                                                          DIR/train2017/, DIR/val2017/ (COCO layout)

The pixels come from :mod:`sparkmim.utils.synthetic` (smooth gradients, solid-colour classes, filled
shapes with exact polygons), so a smoke run exercises real data paths, not just noise."""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from sparkmim.utils.synthetic import noisy_colour, smooth_waves, write_coco_split

COLOURS = {"blue": (30, 40, 220), "red": (220, 30, 30)}


def write_images(folder: Path, count: int, size: int, seed: int) -> Path:
    """Smooth colour gradients (pre-training only needs images)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(smooth_waves(rng, size)).save(folder / f"{index:04d}.png")
    return folder


def write_imagefolder(root: Path, per_class: int, size: int, seed: int) -> Path:
    """train/ and val/ with one folder per class (solid colours with pixel noise)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(noisy_colour(colour, size, rng)).save(folder / f"{index}.png")
    return root


def write_coco(root: Path, train: int, val: int, size: int, seed: int) -> Path:
    """A COCO-layout dataset with two categories (box, triangle) and polygon masks."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        write_coco_split(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json", count, size, rng)
    return root


DEFAULTS = {"images": (16, 72), "imagefolder": (8, 40), "coco": (4, 128)}  # (count, size) per kind


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparkmim.tools.smoke_data",
                                     description="Write tiny generated datasets for a pipeline smoke run.")
    parser.add_argument("specs", nargs="+", metavar="KIND=FOLDER",
                        help="images=DIR, imagefolder=DIR or coco=DIR (several at once are fine)")
    parser.add_argument("--count", type=int, default=None,
                        help="images (per class for imagefolder, training images for coco)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    jobs = []
    for spec in args.specs:
        kind, _, folder = spec.partition("=")
        if kind not in DEFAULTS or not folder:
            parser.error(f"'{spec}': expected KIND=FOLDER with KIND one of {', '.join(DEFAULTS)}")
        jobs.append((kind, Path(folder)))
    for kind, folder in jobs:
        count = args.count or DEFAULTS[kind][0]
        size = args.size or DEFAULTS[kind][1]
        if kind == "images":
            write_images(folder, count, size, args.seed)
        elif kind == "imagefolder":
            write_imagefolder(folder, count, size, args.seed)
        else:
            write_coco(folder, count, max(2, count // 2), size, args.seed)
        print(f"wrote a tiny {kind} dataset to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
