"""A procedural demo image set, so the first command works with nothing downloaded.

The images are structured enough for masked modeling to have something to learn (smooth gradients,
solid shapes with sharp edges, stripe and checker textures that continue under the mask) and are
generated deterministically from a seed into a cache folder, once.
"""
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
READY_MARKER = ".complete"


def default_cache_dir() -> Path:
    """``$SPARKMIM_CACHE`` or ``$XDG_CACHE_HOME/sparkmim`` or ``~/.cache/sparkmim``."""
    if os.environ.get("SPARKMIM_CACHE"):
        return Path(os.environ["SPARKMIM_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sparkmim"


def _colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear two-colour gradient in a random direction."""
    start, end = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (xs * math.cos(angle) + ys * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (start[None, None] * (1 - t[..., None]) + end[None, None] * t[..., None]).astype(np.uint8)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes or a checkerboard with random period, orientation and colours."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(6, 24)
    a, b = np.array(_colour(rng), np.uint8), np.array(_colour(rng), np.uint8)
    if rng.random() < 0.5:
        angle = rng.uniform(0, math.pi)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        mask = (np.floor(phase) % 2).astype(bool)
    else:
        mask = ((np.floor(xs / period) + np.floor(ys / period)) % 2).astype(bool)
    return np.where(mask[..., None], a[None, None], b[None, None])


def render_image(rng: np.random.Generator, size: int) -> Image.Image:
    """One demo image: a gradient or texture background with 1-4 shapes on top."""
    canvas = _texture(rng, size) if rng.random() < 0.35 else _background(rng, size)
    image = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):
        centre = rng.uniform(0.15, 0.85, size=2) * size
        radius = rng.uniform(0.1, 0.3) * size
        box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
        kind = rng.integers(0, 3)
        fill = _colour(rng)
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            angles = rng.uniform(0, 2 * math.pi) + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3])
            points = [(centre[0] + radius * math.cos(t), centre[1] + radius * math.sin(t)) for t in angles]
            draw.polygon(points, fill=fill)
    return image


def ensure_demo_dataset(num_images: int = 1024, image_size: int = 128, seed: int = 0,
                        cache_dir: Optional[Path] = None) -> Path:
    """Return the folder of the demo set, generating it first if it is not complete yet.

    The set is written into a temporary sibling folder and renamed into place, so an interrupted
    generation is never mistaken for a finished one; concurrent processes (several ranks) each
    either find the finished folder or produce an identical one."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"demo-v{GENERATOR_VERSION}-n{num_images}-s{image_size}-seed{seed}"
    if (target / READY_MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    logger.info("generating the demo set (%d images of %d px) in %s", num_images, image_size, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        rng = np.random.default_rng(seed)
        for index in range(num_images):
            render_image(rng, image_size).save(staging / f"{index:05d}.png")
        (staging / READY_MARKER).write_text(f"{num_images}\n")
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / READY_MARKER).is_file():  # a partial leftover, not a finished twin
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
