"""Robust image decoding shared by every data pipeline.

Any mode PIL can open (grayscale, RGBA, CMYK, palette, 16-bit) comes out as 8-bit RGB; files that
cannot be decoded raise :class:`UnreadableImageError` so the dataset can skip and count them."""
import io
import logging
from pathlib import Path
from typing import BinaryIO, List, Tuple, Union

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
ARRAY_EXTENSIONS = (".npy",)  # also read when the data keeps its own values (see sparkmim.utils.values)


class UnreadableImageError(OSError):
    """The file exists but is not a decodable image (truncated, corrupt or not an image)."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        high = array.max() if array.size else 0
        scale = 255.0 / high if high > 0 else 0.0
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = (array.min(), array.max()) if array.size else (0, 0)
        span = high - low if high > low else 1.0
        image = Image.fromarray(((array - low) / span * 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_rgb(path: Union[str, Path, BinaryIO], name: str = "") -> Image.Image:
    """Decode ``path`` (a file, or an open binary stream named ``name`` in messages) fully, so truncation
    is detected here and not later in a transform, as RGB."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # PIL names a stream by its repr ("cannot identify image file <_io.BytesIO object at 0x...>"); the
        # message already starts with the sample's name
        detail = str(error) if isinstance(path, (str, Path)) else str(error).replace(" " + repr(path), "")
        raise UnreadableImageError(f"{name or path}: {detail}") from error


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """:func:`load_rgb` for a file's bytes (a member of a tar shard)."""
    return load_rgb(io.BytesIO(data), name)


def is_image_file(path: Union[str, Path], extensions: Tuple[str, ...] = IMAGE_EXTENSIONS) -> bool:
    return str(path).lower().endswith(extensions)


def no_images_hint(folder: Union[str, Path], extensions: Tuple[str, ...] = IMAGE_EXTENSIONS) -> str:
    """What a folder without any file of ``extensions`` holds instead, when it is data read another way: ``.npy``
    arrays (read only with their own values) or tar shards (read through their index); "" otherwise."""
    folder = Path(folder)
    if not set(ARRAY_EXTENSIONS) <= set(extensions) and any(folder.rglob("*.npy")):
        return " (it holds .npy arrays, which are read with --in-chans N and --mean/--std or --norm-stats auto)"
    if any(folder.rglob("*.tar")):
        return (" (it holds .tar shards: give their shards.json folder, a brace pattern such as "
                "'DIR/train-{000000..000099}.tar', or pack images with spark-data pack, which writes shards.json)")
    return ""


def find_image_files(folder: Union[str, Path], extensions: Tuple[str, ...] = IMAGE_EXTENSIONS) -> List[Path]:
    """The image files under ``folder`` (recursively, sorted). Entries with an image name that are not
    readable files (dangling or looping links, folders named like images) are left out and reported
    once, with their number and a few examples, instead of vanishing from the count without a word."""
    named = [path for path in Path(folder).rglob("*") if is_image_file(path, extensions)]
    files, unusable = [], []
    for path in named:
        (files if path.is_file() else unusable).append(path)
    if unusable:
        unusable.sort()
        examples = ", ".join(f"{p} ({_why_not_a_file(p)})" for p in unusable[:3])
        logger.warning("%d entr%s under %s named like images cannot be read as files and %s left out: %s%s",
                       len(unusable), "y" if len(unusable) == 1 else "ies", folder,
                       "is" if len(unusable) == 1 else "are", examples, " ..." if len(unusable) > 3 else "")
    return sorted(files)


def _why_not_a_file(path: Path) -> str:
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return "link loop"
        except OSError:
            return "dangling link"
        return "link to a folder"
    return "a folder" if path.is_dir() else "not a regular file"
