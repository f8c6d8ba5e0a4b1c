"""Labelled image data for the value benchmark: Fashion-MNIST's IDX files, or any class-folder data set.

Everything is held in memory as uint8 (N, C, H, W) at the evaluation size, so that feature extraction and
fine-tuning draw batches without a loader; pre-training reads image files through ``spark-pretrain``.
"""
import gzip
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from sparkmim.utils.images import is_image_file, load_rgb
from sparkmim.utils.errors import UserError

logger = logging.getLogger(__name__)

# where Debian's dataset-fashion-mnist package puts the files
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                         "bag", "ankle boot")
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


class BenchmarkDataError(UserError, ValueError):
    """The data set cannot be read; the message says what to do."""


@dataclass
class Split:
    """uint8 images (N, C, H, W), C = 1 or 3, at their stored size; int64 labels (N,); the source files
    (None for IDX data, which has no files)."""

    images: torch.Tensor
    labels: torch.Tensor
    files: Optional[List[Path]] = None

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class LabelledData:
    name: str
    train: Split
    test: Split
    classes: List[str]


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise BenchmarkDataError(f"{folder} has no {stem}[.gz]; an IDX data set needs "
                             f"{', '.join(n for pair in IDX_FILES.values() for n in pair)}")


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """An IDX file (big-endian magic and sizes, then uint8 values), gzip'ed or not."""
    with _open(path) as handle:
        header = handle.read(4)
        if len(header) < 4:
            raise BenchmarkDataError(f"{path} is empty or truncated; re-install or regenerate it")
        magic = struct.unpack(">i", header)[0]
        if magic != expected_magic:
            raise BenchmarkDataError(f"{path} is not an IDX file of the expected kind (magic {magic}, "
                                     f"expected {expected_magic})")
        ndim = magic & 0xFF
        shape = struct.unpack(f">{ndim}i", handle.read(4 * ndim))
        data = np.frombuffer(handle.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise BenchmarkDataError(f"{path} holds {data.size} values, its header promises {int(np.prod(shape))}; "
                                 "the file is truncated")
    return data.reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write uint8 ``array`` as an IDX file (gzip'ed when the name ends in .gz)."""
    magic = 0x0800 | array.ndim
    payload = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape) + \
        np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as handle:
        handle.write(payload)
    return path


def load_idx_dataset(folder: Path, name: str = "fashion-mnist", classes: Sequence[str] = FASHION_MNIST_CLASSES
                     ) -> LabelledData:
    splits = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images = read_idx(_find(folder, images_stem), IDX_IMAGES_MAGIC)
        labels = read_idx(_find(folder, labels_stem), IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise BenchmarkDataError(f"{folder}: {images.shape[0]} {split} images but {labels.shape[0]} labels")
        splits[split] = Split(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    num_classes = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
    names = list(classes) if len(classes) >= num_classes else [str(i) for i in range(num_classes)]
    return LabelledData(name, splits["train"], splits["test"], names[:num_classes])


def find_fashion_mnist() -> Path:
    for folder in FASHION_MNIST_DIRS:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    raise BenchmarkDataError("Fashion-MNIST not found; install it with `apt-get install -y dataset-fashion-mnist` "
                             "(Debian/Ubuntu) or give --data FOLDER holding its four IDX files")


def _class_files(root: Path) -> Tuple[List[str], List[Tuple[Path, str]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, c) for c in classes for f in sorted((root / c).rglob("*")) if f.is_file() and is_image_file(f)]
    return classes, files


def _load_folder_split(files: Sequence[Tuple[Path, str]], classes: Sequence[str], size: int) -> Split:
    index = {name: i for i, name in enumerate(classes)}
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        picture = load_rgb(path).resize((size, size), Image.BICUBIC)
        images[i] = np.asarray(picture, dtype=np.uint8).transpose(2, 0, 1)
    labels = torch.tensor([index[c] for _, c in files], dtype=torch.int64)
    return Split(torch.from_numpy(images), labels, [p for p, _ in files])


def load_folder_dataset(root: Path, size: int) -> LabelledData:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``), resized to ``size`` for evaluation.

    Pre-training reads the training files themselves (through ``spark-pretrain``'s augmentation)."""
    train_dir = root / "train"
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise BenchmarkDataError(f"{root} needs train/<class>/ and test/<class>/ (or val/<class>/) folders of images")
    classes, train_files = _class_files(train_dir)
    test_classes, test_files = _class_files(test_dir)
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise BenchmarkDataError(f"{test_dir} has classes missing from {train_dir}: {unknown[:5]}")
    if len(classes) < 2 or not train_files or not test_files:
        raise BenchmarkDataError(f"{root}: need at least 2 classes with images in train/ and in {test_dir.name}/")
    logger.info("folder data set %s: %d classes, %d train and %d %s images", root, len(classes), len(train_files),
                len(test_files), test_dir.name)
    return LabelledData(root.name, _load_folder_split(train_files, classes, size),
                        _load_folder_split(test_files, classes, size), classes)


def load_dataset(source: Optional[str], size: int) -> LabelledData:
    """``None``/``fashion-mnist``: the installed Fashion-MNIST; a folder of IDX files; or a class-folder data set."""
    if source in (None, "fashion-mnist"):
        return load_idx_dataset(find_fashion_mnist())
    root = Path(source).expanduser()
    if not root.is_dir():
        raise BenchmarkDataError(f"data {root} does not exist; give fashion-mnist, a folder of IDX files or a "
                                 "folder with train/<class>/ and test/<class>/")
    if any(root.glob("train-images-idx3-ubyte*")):
        return load_idx_dataset(root, name=root.name)
    return load_folder_dataset(root, size)


def pretraining_list(data: LabelledData, indices: torch.Tensor, folder: Path) -> Path:
    """A text file of image paths for ``spark-pretrain``: the data set's own files, or PNGs written once
    from IDX arrays (at their stored size; ``spark-pretrain`` resizes them like any image)."""
    folder.mkdir(parents=True, exist_ok=True)
    if data.train.files is not None:
        paths = [data.train.files[int(i)] for i in indices]
    else:
        image_dir = folder / "images"
        image_dir.mkdir(exist_ok=True)
        paths = []
        for i in indices.tolist():
            path = image_dir / f"{i:06d}.png"
            if not path.is_file():
                array = data.train.images[i].numpy()
                Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)).save(path)
            paths.append(path)
    listing = folder / "pretrain_images.txt"
    listing.write_text("".join(f"{p.resolve()}\n" for p in paths))
    return listing


IMAGENET_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """(N, C, h, w) uint8 -> (N, C, size, size) uint8, bicubic (as ``spark-pretrain``'s resize)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].float()
        out[start:start + chunk] = F.interpolate(part, size=(size, size), mode="bicubic",
                                                 align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return out


def normalise(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1 or 3, H, W) on any device -> float RGB normalised with ImageNet mean/std, as in pre-training
    (grey images are replicated to three channels, like PIL's RGB conversion)."""
    x = batch_uint8.float().div_(255)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - IMAGENET_MEAN.to(x.device)) / IMAGENET_STD.to(x.device)
