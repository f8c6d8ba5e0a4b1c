"""A procedural demo image set, so the first command works with nothing downloaded.

The images are structured enough for masked modeling to have something to learn (smooth gradients,
solid shapes with sharp edges, stripe and checker textures that continue under the mask) and are
generated deterministically from a seed (:func:`sparkmim.utils.synthetic.scene`) into a cache folder, once.
"""
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from sparkmim.utils.synthetic import scene

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
READY_MARKER = ".complete"


def default_cache_dir() -> Path:
    """``$SPARKMIM_CACHE`` or ``$XDG_CACHE_HOME/sparkmim`` or ``~/.cache/sparkmim``."""
    if os.environ.get("SPARKMIM_CACHE"):
        return Path(os.environ["SPARKMIM_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sparkmim"


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
            scene(rng, image_size).save(staging / f"{index:05d}.png")
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
