"""Images read with their own values and channel counts: 8- and 16-bit grayscale PNG/TIFF as one
channel, multi-band TIFF and ``.npy`` arrays as N channels, float32 (C, H, W) in the data's own units.

The RGB pipeline (:mod:`sparkmim.utils.images`) turns everything into 8-bit RGB, which loses a 16-bit
scan's range and cannot hold 13 satellite bands. Here nothing is rescaled: normalisation comes from the
user's per-channel mean and std, or from :func:`estimate_norm_stats`. A file whose channel count is not
the one asked for raises :class:`ChannelMismatchError`, a kind of unreadable file, so the data sets skip
and count it like a corrupt one.

``.npy`` arrays are (H, W) or (H, W, C), channels last. Multi-band TIFFs are read with ``tifffile`` (an
optional dependency: ``pip install tifffile``); their channel axis is the first or the last one,
whichever is shorter.
"""
import io
import math
from pathlib import Path
from typing import Any, BinaryIO, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .images import UnreadableImageError

TIFF_EXTENSIONS = (".tif", ".tiff")


class ChannelMismatchError(UnreadableImageError):
    """A file with another number of channels than the run's ``in_chans``; ``found`` and ``expected`` let
    a command that has no --in-chans (spark-viz: the checkpoint decides) word the error its own way."""

    def __init__(self, message: str, found: Optional[int] = None, expected: Optional[int] = None) -> None:
        super().__init__(message)  # the message alone rebuilds it (a loader worker re-raises it that way)
        self.found, self.expected = found, expected


Source = Union[Path, BinaryIO]  # a file, or an open binary stream (a tar shard's member)


def _read_tiff(path: Source) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        return _read_with_pil(path)
    array = tifffile.imread(str(path) if isinstance(path, Path) else path)
    if array.ndim == 3 and array.shape[0] < array.shape[-1]:
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) to channels last
    return array


def _read_with_pil(path: Source) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
            return np.asarray(image)
        if image.mode in ("RGB", "RGBA", "LA", "P", "CMYK", "YCbCr"):
            return np.asarray(image.convert("RGB"))
        raise UnreadableImageError(f"{path}: image mode {image.mode} is not supported")


def _load_npy(source: Source) -> np.ndarray:
    """An array file, never unpickled. numpy calls anything without the array header 'pickled data' and
    suggests allow_pickle: for a damaged file, that is the wrong advice."""
    try:
        return np.load(source, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error):
            raise ValueError("not a numeric .npy array (damaged, or an object array: those are never "
                             "unpickled)") from error
        raise


def read_values(path: Union[str, Path], source: Union[Path, BinaryIO, None] = None) -> np.ndarray:
    """The file's values as (H, W, C), in its own dtype and units. ``source``: an open binary stream
    holding the file (a tar shard's member); ``path`` then only names it and gives its format."""
    path = Path(path)
    source = path if source is None else source
    try:
        suffix = path.suffix.lower()
        if suffix == ".npy":
            array = _load_npy(source)
        elif suffix in TIFF_EXTENSIONS:
            array = _read_tiff(source)
        else:
            array = _read_with_pil(source)
    except UnreadableImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        detail = str(error) if source is path else str(error).replace(repr(source), "the data")
        raise UnreadableImageError(f"{path}: {detail}") from error
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or 0 in array.shape:
        raise UnreadableImageError(f"{path}: expected an (H, W) or (H, W, C) array, got shape {array.shape}")
    return array


def load_values(path: Union[str, Path], in_chans: int, source: Union[Path, BinaryIO, None] = None) -> torch.Tensor:
    """float32 (C, H, W) with exactly ``in_chans`` channels, else :class:`ChannelMismatchError`; a float file
    holding NaN or infinity (a no-data fill) is unreadable: one such pixel makes the loss and the statistics NaN."""
    array = read_values(path, source)
    if array.shape[-1] != in_chans:
        raise ChannelMismatchError(f"{path}: {array.shape[-1]} channel(s), the run expects {in_chans} (--in-chans)",
                                   found=array.shape[-1], expected=in_chans)
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise UnreadableImageError(f"{path}: holds NaN or infinite values (a no-data fill?); replace them with "
                                   "numbers, e.g. numpy.nan_to_num, before training on the file")
    return torch.from_numpy(np.ascontiguousarray(array.astype(np.float32))).permute(2, 0, 1).contiguous()


NORM_STATS = ("given", "auto")


def check_channel_options(in_chans: int, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                          norm_stats: str) -> None:
    """--in-chans with its normalisation (spark-pretrain's and spark-finetune's rule): N means and N stds in
    the data's units, or --norm-stats auto; RGB alone keeps ImageNet's. One line that says what to give."""
    from .config import ConfigError

    if in_chans <= 0:
        raise ConfigError(f"--in-chans must be positive, got {in_chans}")
    if norm_stats not in NORM_STATS:
        raise ConfigError(f"norm_stats must be one of {', '.join(NORM_STATS)}, got {norm_stats!r}")
    if (mean is None) != (std is None):
        raise ConfigError("give --mean and --std together (one value per input channel)")
    if mean is not None:
        if len(mean) != in_chans or len(std) != in_chans:
            raise ConfigError(f"--mean and --std need {in_chans} values each (--in-chans {in_chans}), "
                              f"got {len(mean)} and {len(std)}")
        if not all(math.isfinite(value) for value in (*mean, *std)):
            raise ConfigError(f"--mean and --std must be finite numbers, got {list(mean)} and {list(std)}")
        if min(std) <= 0:
            raise ConfigError(f"--std values must be positive, got {list(std)}")
    elif in_chans != 3 and norm_stats != "auto":
        raise ConfigError(f"--in-chans {in_chans} needs its normalisation: --mean and --std ({in_chans} "
                          "values each, in the data's own units) or --norm-stats auto")


def check_one_normalisation(given: Mapping[str, Any]) -> None:
    """The command line asks for one normalisation: ``--norm-stats auto`` (computed from the data) or
    ``--mean/--std``. Both would silently use the given values. (Only the command line: a run's config.yaml,
    reused as a recipe, records the computed values beside ``norm_stats: auto``.)"""
    from .config import ConfigError

    if given.get("norm_stats") == "auto" and given.get("mean") is not None:
        raise ConfigError("--norm-stats auto computes the mean and std from the data: give it or --mean/--std, "
                          "not both")


def decode_values(data: bytes, name: str, in_chans: int) -> torch.Tensor:
    """:func:`load_values` for a file's bytes (a member of a tar shard); ``name`` gives the format."""
    return load_values(name, in_chans, io.BytesIO(data))


def estimate_norm_stats(paths: Sequence[Path], in_chans: int, max_files: int = 256) -> Tuple[List[float], List[float]]:
    """Per-channel mean and std over every pixel of up to ``max_files`` files spread evenly over the data set
    (unreadable and mismatched files are passed over)."""
    step = max(1, len(paths) // max_files)
    first_problem: List[str] = []

    def load_or_none(path: Path) -> Optional[torch.Tensor]:
        try:
            return load_values(path, in_chans)
        except UnreadableImageError as error:
            first_problem[:] = first_problem or [str(error)]
            return None

    try:
        return norm_stats_of(map(load_or_none, list(paths)[::step][:max_files]), in_chans)
    except UnreadableImageError as error:
        message = f"{error} (the first: {first_problem[0]})" if first_problem else str(error)
        raise UnreadableImageError(message) from None


def saved_norm_stats(checkpoint: Optional[Path], in_chans: int, allow_unsafe: bool = False
                     ) -> Optional[Tuple[List[float], List[float]]]:
    """The mean and std recorded in the config of ``checkpoint`` (spark-pretrain's or spark-finetune's), when it
    was trained on ``in_chans`` channels: a resumed run keeps the statistics its weights were trained with, even
    when the data changed since. None for no checkpoint, one without them, or one that cannot be read (loading
    it for the resume reports why). Memory-mapped: only the config is read."""
    from .checkpoint import recorded_config

    if checkpoint is None:
        return None
    config = recorded_config(checkpoint, allow_unsafe=allow_unsafe)
    if config.get("mean") is None or config.get("std") is None or config.get("in_chans") != in_chans:
        return None
    return [float(v) for v in config["mean"]], [float(v) for v in config["std"]]


def norm_stats_of(images: Iterable, in_chans: int) -> Tuple[List[float], List[float]]:
    """Per-channel mean and std over every pixel of the given (C, H, W) tensors (None entries: unreadable
    samples, passed over)."""
    total = torch.zeros(in_chans, dtype=torch.float64)
    squares = torch.zeros(in_chans, dtype=torch.float64)
    count = 0
    for image in images:
        if image is None:
            continue
        values = image.double().flatten(1)
        total += values.sum(dim=1)
        squares += values.square().sum(dim=1)
        count += values.shape[1]
    if count == 0:
        raise UnreadableImageError(f"none of the sampled files has {in_chans} readable channel(s)")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
