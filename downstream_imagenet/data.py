"""Image-folder datasets, the fine-tuning transforms and the (distributed) loaders.

Unreadable images are not fatal: the dataset yields ``None`` for them and the collate function drops
them and counts them, so a few corrupt files in a million do not stop a run, and the count is
logged instead of hidden.
"""
import dataclasses
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sparkmim.utils.images import (ARRAY_EXTENSIONS, IMAGE_EXTENSIONS, UnreadableImageError, find_image_files,
                                   load_rgb, no_images_hint)
from sparkmim.utils.config import ConfigError
from sparkmim.utils.distributed import computed_on_main
from sparkmim.utils.run import loader_workers
from sparkmim.utils.values import estimate_norm_stats, load_values, saved_norm_stats
from sparkmim.utils.errors import UserError
from sparkmim.utils.signals import ignore_interrupt_in_worker

from .config import FinetuneConfig, reads_values

logger = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # timm's, as every model expects


class DataError(UserError, ValueError):
    """The dataset folders are missing, empty or inconsistent."""


class ImageFolderDataset(Dataset):
    """``root/<class>/**/<image>`` with classes sorted by name (the ImageFolder convention).

    ``__getitem__`` returns ``None`` for a file that cannot be decoded; use :func:`collate_skipping`."""

    def __init__(self, root: Path, transform: Optional[Callable] = None, load: Callable[[str], Any] = load_rgb,
                 extensions: Tuple[str, ...] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        self.load = load
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{self.root} has no class sub-folders (expected <root>/<class>/<images>)")
        self.samples: List[Tuple[str, int]] = []
        for index, name in enumerate(self.classes):
            files = [str(p) for p in find_image_files(self.root / name, extensions)]
            if not files:
                raise DataError(f"class folder {self.root / name} contains no image files"
                                + no_images_hint(self.root / name, extensions))
            self.samples.extend((path, index) for path in files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Optional[Tuple[Any, int]]:
        path, target = self.samples[index]
        try:
            image = self.load(path)
        except UnreadableImageError as error:
            logger.warning("skipping unreadable image %s", error)
            return None
        return (self.transform(image) if self.transform is not None else image), target


@dataclass
class Batch:
    images: torch.Tensor
    targets: torch.Tensor
    skipped: int

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pinning thread (a dataclass is otherwise handed over unpinned, and
        each non-blocking copy to the GPU would then wait for the host)."""
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.skipped)


def collate_skipping(items: Sequence[Optional[Tuple[torch.Tensor, int]]]) -> Batch:
    """Stack the readable samples; ``skipped`` counts the unreadable ones."""
    kept = [item for item in items if item is not None]
    skipped = len(items) - len(kept)
    if not kept:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    images = torch.stack([item[0] for item in kept])
    targets = torch.tensor([item[1] for item in kept], dtype=torch.long)
    return Batch(images, targets, skipped)


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``, without padding, so a distributed evaluation
    sees each image exactly once (DistributedSampler repeats images to even out the shards)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def dataset_dirs(config: FinetuneConfig, training: bool = True) -> Tuple[Optional[Path], Path]:
    """(train folder, val folder) from --data or --train-dir/--val-dir; an evaluation needs only val/."""
    if config.train_dir or config.val_dir:
        train = Path(config.train_dir) if config.train_dir else None
        return train, Path(config.val_dir)
    root = Path(config.data)
    for name in ("train", "val") if training else ("val",):
        if not (root / name).is_dir():
            needed = "train/ and val/ class folders" if training else "a val/ class folder"
            raise DataError(f"{root} must contain {needed} (missing {name}/); or give "
                            f"{'--train-dir and --val-dir' if training else '--val-dir'}")
    return (root / "train" if (root / "train").is_dir() else None), root / "val"


def class_difference(first: Sequence[str], second: Sequence[str], first_name: str, second_name: str) -> str:
    """How two class lists differ, for an error message: ``only in <first_name> [...]`` and ``only in
    <second_name> [...]``, each only when not empty (at most 10 names each)."""
    def listed(names: Set[str]) -> str:
        names = sorted(names)
        return f"{names[:10]}{' ...' if len(names) > 10 else ''}"
    parts = [f"only in {name} {listed(only)}" for name, only in ((first_name, set(first) - set(second)),
                                                                   (second_name, set(second) - set(first))) if only]
    return ", ".join(parts) or "the same classes in another order"


def check_same_classes(train: ImageFolderDataset, val: ImageFolderDataset) -> None:
    if train.classes != val.classes:
        difference = class_difference(train.classes, val.classes, "train", "val")
        raise DataError(f"train and val class folders differ: {difference}")


def _interpolation_mode(name: str):
    from torchvision.transforms import InterpolationMode
    return InterpolationMode(name)


class RedrawRefusedPosterize:
    """Runs a timm auto-augment policy and redraws the rare draws that recent Pillow refuses.

    timm's RandAugment/AutoAugment can ask for a posterize to 0 bits (a black image); Pillow 13
    raises ``ValueError`` for it instead, which would kill a data-loading worker mid-epoch. Such a
    draw is replaced by a fresh draw of the policy; any other error propagates."""

    def __init__(self, policy: Callable, attempts: int = 10) -> None:
        self.policy = policy
        self.attempts = attempts

    def __call__(self, image):
        for _ in range(self.attempts):
            try:
                return self.policy(image)
            except ValueError as error:
                if "bits must be" not in str(error):
                    raise
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.policy!r})"


def image_reader(config: FinetuneConfig) -> Dict[str, Any]:
    """How files are read (``load`` and ``extensions`` of :class:`ImageFolderDataset`): 8-bit RGB, or with
    their own values and ``in_chans`` channels (arrays too), as spark-pretrain reads them."""
    if not reads_values(config):
        return {"load": load_rgb, "extensions": IMAGE_EXTENSIONS}
    return {"load": partial(load_values, in_chans=config.in_chans), "extensions": IMAGE_EXTENSIONS + ARRAY_EXTENSIONS}


def fill_norm_stats(config: FinetuneConfig, resume_from: Optional[Path]) -> FinetuneConfig:
    """--norm-stats auto: the per-channel mean and std of up to 256 training files, computed once (by the main
    process, for all of them) and kept in the run's config; a run resumed from ``resume_from`` keeps those
    its checkpoint was trained with."""
    if config.norm_stats != "auto" or config.mean is not None:
        return config
    resumed = saved_norm_stats(resume_from, config.in_chans, config.allow_unsafe)
    if resumed is not None:
        logger.info("normalisation of the resumed checkpoint (--norm-stats auto): mean %s, std %s", *resumed)
        return dataclasses.replace(config, mean=resumed[0], std=resumed[1])
    train_dir, _ = dataset_dirs(config)
    if train_dir is None:
        raise ConfigError("--norm-stats auto computes the statistics from the training files: give --train-dir")

    def compute() -> Tuple[List[float], List[float]]:
        paths = find_image_files(train_dir, image_reader(config)["extensions"])
        try:
            return estimate_norm_stats(paths, config.in_chans)
        except UnreadableImageError as error:
            raise DataError(f"--norm-stats auto: {error} under {train_dir}; check --in-chans") from error

    mean, std = computed_on_main(compute, "computing --norm-stats auto")
    logger.info("normalisation from the training data (--norm-stats auto): mean %s, std %s", mean, std)
    return dataclasses.replace(config, mean=mean, std=std)


def values_train_transform(config: FinetuneConfig) -> Callable:
    """Training views of (C, H, W) tensors of the data's own values: RandomResizedCrop and flip on all channels
    alike, the data's normalisation, RandomErasing. Auto-augment and colour jitter are RGB operations with no
    meaning for 13 bands or a CT's Hounsfield units, so they are left out (said once in the log)."""
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms

    if config.auto_augment not in (None, "", "none") or config.color_jitter:
        logger.info("data read with its own values (%d channel(s)): auto-augment '%s' and colour jitter are RGB "
                    "operations and are not applied", config.in_chans, config.auto_augment)
    steps = [transforms.RandomResizedCrop(config.input_size, scale=tuple(config.train_scale),
                                          interpolation=_interpolation_mode(config.interpolation), antialias=True),
             transforms.RandomHorizontalFlip(), transforms.Normalize(config.mean, config.std)]
    if config.reprob > 0:
        steps.append(RandomErasing(config.reprob, mode=config.remode, device="cpu"))
    return transforms.Compose(steps)


def values_eval_transform(config: FinetuneConfig) -> Callable:
    """Evaluation views of tensors of the data's own values: resize to input_size / crop_pct, centre crop,
    normalise (timm's 'center' crop mode)."""
    from torchvision import transforms

    if config.crop_mode != "center":
        logger.info("data read with its own values: crop mode '%s' is not available, a centre crop is used",
                    config.crop_mode)
    return transforms.Compose([
        transforms.Resize(math.floor(config.input_size / config.crop_pct),
                          interpolation=_interpolation_mode(config.interpolation), antialias=True),
        transforms.CenterCrop(config.input_size), transforms.Normalize(config.mean, config.std)])


def train_transform(config: FinetuneConfig) -> Callable:
    """timm's ImageNet training pipeline: RandomResizedCrop, flip, auto-augment, ToTensor,
    Normalize, RandomErasing. 'trivial' inserts torchvision's TrivialAugmentWide after the flip
    (what the reference fine-tuning used below 384 px). Data read with its own values: see
    :func:`values_train_transform`."""
    if reads_values(config):
        return values_train_transform(config)
    from timm.data import create_transform
    from torchvision import transforms

    auto_augment = config.auto_augment
    trivial = auto_augment == "trivial"
    if trivial or auto_augment in (None, "", "none"):
        auto_augment = None
    transform = create_transform(
        input_size=config.input_size, is_training=True, scale=tuple(config.train_scale),
        auto_augment=auto_augment, color_jitter=config.color_jitter or None,
        interpolation=config.interpolation, re_prob=config.reprob, re_mode=config.remode,
        re_count=1, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    steps = list(transform.transforms)
    if trivial:
        flip = next(i for i, step in enumerate(steps) if isinstance(step, transforms.RandomHorizontalFlip))
        steps.insert(flip + 1, transforms.TrivialAugmentWide(
            interpolation=_interpolation_mode(config.interpolation)))
    else:
        from timm.data.auto_augment import AugMixAugment, AutoAugment, RandAugment
        steps = [RedrawRefusedPosterize(step) if isinstance(step, (AutoAugment, RandAugment, AugMixAugment))
                 else step for step in steps]
    return transforms.Compose(steps)


def eval_transform(config: FinetuneConfig) -> Callable:
    if reads_values(config):
        return values_eval_transform(config)
    from timm.data import create_transform

    return create_transform(
        input_size=config.input_size, is_training=False, interpolation=config.interpolation,
        crop_pct=config.crop_pct, crop_mode=config.crop_mode, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def train_loader(dataset: ImageFolderDataset, config: FinetuneConfig, batch_per_process: int,
                 rank: int, world_size: int, device: torch.device) -> DataLoader:
    """Shuffled, epoch-seeded and sharded (call ``loader.sampler.set_epoch``); batches are full
    (drop_last) because mixup pairs a batch with its reverse. Page-locked when ``device`` (the process's
    training device) is a GPU."""
    if config.repeated_aug:
        from timm.data.distributed_sampler import RepeatAugSampler
        sampler = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                   num_repeats=config.repeated_aug)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
    if len(sampler) < batch_per_process:
        raise DataError(f"the batch per process ({batch_per_process}) is larger than the training "
                        f"images per process ({len(sampler)}); lower --batch-size")
    workers = loader_workers(config.workers)
    return DataLoader(dataset, batch_size=batch_per_process, sampler=sampler, drop_last=True,
                      num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=workers > 0, collate_fn=collate_skipping,
                      worker_init_fn=ignore_interrupt_in_worker)


def eval_loader(dataset: ImageFolderDataset, config: FinetuneConfig, batch_per_process: int,
                rank: int, world_size: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_per_process, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=loader_workers(config.workers), pin_memory=device.type == "cuda",
                      collate_fn=collate_skipping, worker_init_fn=ignore_interrupt_in_worker)
