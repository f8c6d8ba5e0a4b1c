"""Pre-training data: image discovery, the paper's augmentation, and a resumable deterministic order.

Determinism is what makes resume exact: the order of an epoch is a pure function of (seed, epoch),
the batch of a step a pure function of the step, and each image's augmentation is drawn from an RNG
seeded by (seed, epoch, index). So a resumed run sees the same images, crops and flips as an
uninterrupted one, whatever the number of loader workers.
"""
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar, Union

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import transforms
from torchvision.transforms import functional as TF

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sparkmim.utils.images import (ARRAY_EXTENSIONS, IMAGE_EXTENSIONS, UnreadableImageError, find_image_files,
                                   is_image_file, load_rgb, no_images_hint)
from sparkmim.utils.errors import UserError
from sparkmim.utils.values import decode_values, load_values

logger = logging.getLogger(__name__)

T = TypeVar("T")

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's, as every model expects


class DataError(UserError, ValueError):
    """The data argument does not lead to any usable image."""


@dataclass(frozen=True)
class ValueSpec:
    """Data read with its own values (see sparkmim.utils.values): channels and per-channel statistics."""
    in_chans: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def load(self, path: Path) -> torch.Tensor:
        return load_values(path, self.in_chans)

    def decode(self, data: bytes, name: str) -> torch.Tensor:
        return decode_values(data, name, self.in_chans)


def list_images(source: str, arrays: bool = False, argument: str = "DATA") -> List[Path]:
    """All image files under a folder (recursively, sorted; labels and layout ignored), or the paths
    listed in a text file (one per line; relative paths are relative to the list file). ``arrays``: also
    ``.npy`` files (data read with its own values). ``argument``: the command's name for ``source``, which
    the advice in an error names."""
    path = Path(source).expanduser()
    if path.is_dir():
        extensions = IMAGE_EXTENSIONS + (ARRAY_EXTENSIONS if arrays else ())
        files = find_image_files(path, extensions)
        if not files:
            raise DataError(f"no image files ({', '.join(('jpg', 'png', '...'))}) found under {path}"
                            f"{no_images_hint(path, extensions)}; point {argument} at a folder of images or a text "
                            "file listing image paths")
        return files
    if path.is_file():
        if is_image_file(path):
            raise DataError(f"{path} is a single image; give a folder of images or a text file listing paths")
        try:
            text = path.read_text(encoding="utf-8-sig")  # -sig: a list saved by a Windows editor starts with a BOM
        except UnicodeDecodeError:
            raise DataError(f"{path} is not a text file listing image paths (not UTF-8 text); give a folder of "
                            "images or a text file with one image path per line") from None
        files = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entry = Path(line).expanduser()
                files.append(entry if entry.is_absolute() else path.parent / entry)
        if not files:
            raise DataError(f"the list file {path} names no images; write one image path per line")
        return files
    raise DataError(f"data path {path} does not exist; give a folder of images or a text file of paths")


def first_readable(paths: Sequence[Path], in_chans: Optional[int] = None) -> int:
    """Index of the first decodable image (with ``in_chans`` channels when the data is read with its own
    values). Cheap when the data is fine (usually the first file); scans everything only in the failure
    case, which must be reported before building a model."""
    last_error = None
    for index, path in enumerate(paths):
        try:
            load_values(path, in_chans) if in_chans is not None else load_rgb(path)
            return index
        except (UnreadableImageError, OSError) as error:
            last_error = error
            continue
    wanted = f" with {in_chans} channel(s)" if in_chans is not None else ""
    raise DataError(f"none of the {len(paths)} listed files is a readable image{wanted} (first: {paths[0]}; last "
                    f"error: {last_error}); check the data path, the files and --in-chans")


def paper_crop_and_flip(size: Tuple[int, int]) -> List[Callable]:
    """The paper's augmentation: RandomResizedCrop(scale 0.67-1, bicubic) and a horizontal flip; on PIL
    images and on (C, H, W) tensors of any channel count alike (antialias only matters for tensors)."""
    return [transforms.RandomResizedCrop(size, scale=(0.67, 1.0), interpolation=transforms.InterpolationMode.BICUBIC,
                                         antialias=True),
            transforms.RandomHorizontalFlip()]


def train_transform(size: Tuple[int, int]) -> transforms.Compose:
    """The paper's augmentation on an RGB image, then ImageNet normalisation."""
    return transforms.Compose([*paper_crop_and_flip(size), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def values_transform(size: Tuple[int, int], values: ValueSpec) -> transforms.Compose:
    """The same augmentation on a (C, H, W) tensor of the data's own values, all channels alike, then the
    data's per-channel normalisation."""
    return transforms.Compose([*paper_crop_and_flip(size), transforms.Normalize(values.mean, values.std)])


def augmentation(size: Tuple[int, int], values: Optional[ValueSpec] = None) -> transforms.Compose:
    """The training view of one image: RGB with ImageNet statistics, or the data's own values."""
    return values_transform(size, values) if values is not None else train_transform(size)


def cover_size(height: int, width: int, size: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) of an image of ``height`` x ``width`` resized, keeping its aspect, to cover ``size``."""
    scale = max(size[0] / height, size[1] / width)
    return max(size[0], round(height * scale)), max(size[1], round(width * scale))


def eval_values(tensor: torch.Tensor, size: Tuple[int, int], values: ValueSpec) -> torch.Tensor:
    """The deterministic view of :func:`eval_image` for a (C, H, W) tensor of the data's own values."""
    resized = TF.resize(tensor, list(cover_size(tensor.shape[-2], tensor.shape[-1], size)),
                        interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)
    return TF.normalize(TF.center_crop(resized, list(size)), values.mean, values.std)


def eval_image(image: Image.Image, size: Tuple[int, int]) -> torch.Tensor:
    """Deterministic view for pictures: resize to cover ``size`` (keeping aspect), centre crop, normalise."""
    height, width = cover_size(image.height, image.width, size)
    tensor = TF.to_tensor(TF.center_crop(image.resize((width, height), Image.BICUBIC), list(size)))
    return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63 - 1)


@contextmanager
def sample_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """torch's CPU RNG seeded for one sample's augmentation, the caller's RNG state restored after:
    the draw depends on (seed, epoch, index) only, whichever worker or loading path makes it.

    Only the CPU generator: ``torch.manual_seed`` would also re-seed the GPU's, from which the training
    process draws its masks (and which ``fork_rng(devices=[])`` does not restore)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index))
        yield


def load_with_replacement(count: int, start: int, load: Callable[[int], T]) -> Tuple[T, List[int]]:
    """``load(i)`` for i = start, start + 1, ... (wrapping) until a file loads; returns its result and
    the unreadable indices passed over on the way."""
    failed: List[int] = []
    for offset in range(count):
        candidate = (start + offset) % count
        try:
            return load(candidate), failed
        except (UnreadableImageError, OSError):
            failed.append(candidate)
    raise DataError("no readable image left in the data set (files were removed or damaged during the run)")


class PretrainImages(Dataset):
    """Images by index; an unreadable file is replaced by the next readable one (deterministically)
    and reported in the sample so the main process can warn once per file and count per epoch.

    Items are requested as ``(epoch, index)`` pairs (see :class:`StepBatchSampler`)."""

    def __init__(self, paths: Sequence[Path], size: Tuple[int, int], seed: int,
                 values: Optional[ValueSpec] = None) -> None:
        self.paths = list(paths)
        self.values = values
        self.transform = augmentation(size, values)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int):
        return self.values.load(self.paths[index]) if self.values is not None else load_rgb(self.paths[index])

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, List[int]]:
        epoch, index = key
        image, failed = load_with_replacement(len(self.paths), index, self._load)
        with sample_rng(self.seed, epoch, index):
            return self.transform(image), failed


def collate(batch: Sequence[Tuple[torch.Tensor, List[int]]]) -> Tuple[torch.Tensor, List[int]]:
    images = torch.stack([item[0] for item in batch])
    failed = [index for item in batch for index in item[1]]
    return images, failed


class StepBatchSampler(Sampler):
    """Yields this process's micro-batches, step after step, forever, starting at ``start_step``.

    Step ``s`` of epoch ``e = s // steps_per_epoch`` takes the next ``global_batch`` entries of the
    epoch's permutation (wrapping around at the end, so every step is full); rank ``r`` takes its
    contiguous share, cut into ``accumulation`` micro-batches."""

    def __init__(self, num_images: int, global_batch: int, micro_batch: int, rank: int, world_size: int,
                 seed: int, start_step: int = 0) -> None:
        super().__init__()
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by the number of processes "
                             f"{world_size}; choose a multiple of {world_size}")
        self.per_rank = global_batch // world_size
        if self.per_rank % micro_batch:
            raise ValueError(f"the per-process batch {self.per_rank} is not divisible by micro batch "
                             f"{micro_batch}; choose a divisor of {self.per_rank}")
        self.num_images, self.global_batch, self.micro_batch = num_images, global_batch, micro_batch
        self.rank, self.seed, self.start_step = rank, seed, start_step
        self.steps_per_epoch = max(1, math.ceil(num_images / global_batch))

    @property
    def accumulation(self) -> int:
        return self.per_rank // self.micro_batch

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_images, generator=generator)

    def step_indices(self, step: int) -> List[int]:
        """This rank's indices for ``step`` (all micro-batches together)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self.permutation(epoch)
        begin = within * self.global_batch + self.rank * self.per_rank
        return [int(order[(begin + j) % self.num_images]) for j in range(self.per_rank)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        step, cached_epoch, order = self.start_step, -1, None
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            if epoch != cached_epoch:
                order, cached_epoch = self.permutation(epoch), epoch
            begin = within * self.global_batch + self.rank * self.per_rank
            indices = [int(order[(begin + j) % self.num_images]) for j in range(self.per_rank)]
            for start in range(0, self.per_rank, self.micro_batch):
                yield [(epoch, i) for i in indices[start:start + self.micro_batch]]
            step += 1


class SkipReporter:
    """Main-process bookkeeping of unreadable files: one warning per file, a count per epoch.

    A failure is a file's index in ``paths`` (folder input), or a line naming the shard member or shard
    and the reason (shard input). A file's reason is read again here, once, when it is first reported
    (the workers only pass indices): ``in_chans`` says how the run reads files (None: 8-bit RGB)."""

    def __init__(self, paths: Sequence[Path] = (), in_chans: Optional[int] = None) -> None:
        self.paths = paths
        self.in_chans = in_chans
        self.warned: Set[Union[int, str]] = set()
        self.epoch_failed: Set[Union[int, str]] = set()

    def report(self, failed: Sequence[Union[int, str]]) -> None:
        for entry in failed:
            self.epoch_failed.add(entry)
            if entry not in self.warned:
                self.warned.add(entry)
                if isinstance(entry, int):
                    logger.warning("skipping unreadable image %s (replaced by the next readable one)",
                                   unreadable_reason(self.paths[entry], self.in_chans))
                else:
                    logger.warning("skipping %s", entry)

    def pop_epoch_failed(self) -> Set[Union[int, str]]:
        """The distinct unreadable files met by this process since the last call (file indices or lines)."""
        failed, self.epoch_failed = self.epoch_failed, set()
        return failed


def unreadable_reason(path: Path, in_chans: Optional[int] = None) -> str:
    """Why ``path`` cannot be used (it starts with the path), read as the run reads it."""
    try:
        load_values(path, in_chans) if in_chans is not None else load_rgb(path)
    except (UnreadableImageError, OSError) as error:
        return str(error) if str(path) in str(error) else f"{path}: {error}"
    return f"{path} (readable when checked again)"


def load_vis_images(paths: Sequence[Path], size: Tuple[int, int], count: int,
                    start: int = 0, values: Optional[ValueSpec] = None) -> Optional[torch.Tensor]:
    """The first ``count`` readable images from ``start``, in the deterministic eval view."""
    tensors = []
    for path in list(paths[start:]) + list(paths[:start]):
        if len(tensors) >= count:
            break
        try:
            tensors.append(eval_values(values.load(path), size, values) if values is not None
                           else eval_image(load_rgb(path), size))
        except (UnreadableImageError, OSError):
            continue
    return torch.stack(tensors) if tensors else None
