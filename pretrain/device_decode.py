"""JPEG decoding on the training device (``spark-pretrain --decode-on-device``).

On a GPU, the CPU loader (PIL decode + resize in worker processes) can bound training speed. This
path moves the expensive part to the device: the loader workers only read each file's bytes, parse
its header for the size, and draw the crop box and flip; the training process then decodes the whole
micro-batch with ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA), and crops,
resizes (bicubic, antialiased, uint8 like PIL), flips and normalises there.

The same code runs on a CPU device (decoding then happens on the CPU, in the training process), which
is how it is tested. The crop box and flip come from the same per-sample RNG as the CPU path
(:func:`sparkmim.pretrain.data.sample_rng`, ``RandomResizedCrop.get_params``), so resume stays exact
and both paths see the same crops; pixels differ only by decoder and resampler rounding.

Files the device decoder should not get fall back to the CPU path in the worker and travel as uint8
CHW tensors: anything that is not a JPEG with RGB or greyscale components (PNG, CMYK JPEG, ...), and
JPEGs whose data does not end with an end-of-image marker (possibly truncated; PIL decides). Files
that cannot be read are replaced by the next readable one and reported, as in the CPU path; a file
that passes the header check but fails on the device is handled the same way when the batch arrives.
"""
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Set, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as TF2

from sparkmim.utils.images import UnreadableImageError, load_rgb

from .data import IMAGENET_MEAN, IMAGENET_STD, load_with_replacement, sample_rng, train_transform

logger = logging.getLogger(__name__)

Box = Tuple[int, int, int, int]  # top, left, height, width (RandomResizedCrop.get_params order)

DEVICE_MODES = ("RGB", "L")  # PIL modes of JPEGs whose components nvJPEG/libjpeg turn into RGB themselves
EOI_MARKER = b"\xff\xd9"
EOI_SEARCH = 64  # bytes at the end of a file searched for the end-of-image marker (padding is allowed)
HEADER_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass
class EncodedSample:
    """One training image as the loader hands it over.

    ``data`` is the file's bytes (1-D uint8) when ``encoded``, else a uint8 (3, H, W) image decoded in
    the worker. ``key`` is (epoch, requested index, index of the file actually used); ``failed`` lists
    the unreadable files skipped to get here."""

    data: torch.Tensor
    encoded: bool
    box: Box
    flip: bool
    key: Tuple[int, int, int]
    failed: List[int] = field(default_factory=list)


@dataclass
class EncodedBatch:
    """A micro-batch of variable-size items, kept as a list (see :func:`collate_encoded`)."""

    samples: List[EncodedSample]
    failed: List[int]


def collate_encoded(batch: Sequence[EncodedSample]) -> EncodedBatch:
    """Items differ in size (encoded lengths, image sides), so they stay a list; decoding stacks them."""
    return EncodedBatch(samples=list(batch), failed=[index for item in batch for index in item.failed])


def device_decodable(header: Image.Image, raw: bytes) -> bool:
    """A JPEG with RGB/greyscale components whose data ends with the end-of-image marker.

    The marker check catches most truncated files cheaply; in entropy-coded data 0xFF is always
    followed by 0x00 or a restart marker, so 0xFFD9 near the end is the real end of the image."""
    return (header.format == "JPEG" and header.mode in DEVICE_MODES
            and raw.find(EOI_MARKER, max(0, len(raw) - EOI_SEARCH)) >= 0)


class EncodedImages(Dataset):
    """The device-decoding counterpart of :class:`sparkmim.pretrain.data.PretrainImages`.

    Items are requested as ``(epoch, index)`` pairs and come back as :class:`EncodedSample`."""

    def __init__(self, paths: Sequence[Path], size: Tuple[int, int], seed: int) -> None:
        self.paths = list(paths)
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        # the CPU path's own transforms, so both paths draw from one definition of the augmentation
        crop, flip = train_transform(self.size).transforms[:2]
        assert isinstance(crop, transforms.RandomResizedCrop) and isinstance(flip, transforms.RandomHorizontalFlip)
        self.scale, self.ratio, self.flip_p = list(crop.scale), list(crop.ratio), float(flip.p)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Tuple[int, int]) -> EncodedSample:
        epoch, index = key
        return self.sample(epoch, index)

    def draw(self, image: Image.Image, epoch: int, index: int) -> Tuple[Box, bool]:
        """Crop box and flip exactly as the CPU path draws them for (seed, epoch, index).

        ``image`` may be a lazily opened PIL image: only its size is read, nothing is decoded."""
        with sample_rng(self.seed, epoch, index):
            box = transforms.RandomResizedCrop.get_params(image, self.scale, self.ratio)
            flip = bool(torch.rand(1) < self.flip_p)
        return (int(box[0]), int(box[1]), int(box[2]), int(box[3])), flip

    def sample(self, epoch: int, index: int, first: Optional[int] = None, allow_encoded: bool = True) -> EncodedSample:
        """The item for ``index``, starting the search for a readable file at ``first`` (default: the
        index itself). Unreadable files are skipped and listed, as in the CPU path."""
        start = index if first is None else first
        item, failed = load_with_replacement(len(self.paths), start,
                                             lambda candidate: self._load(candidate, epoch, index, allow_encoded))
        item.failed = failed
        return item

    def _load(self, candidate: int, epoch: int, index: int, allow_encoded: bool) -> EncodedSample:
        path = self.paths[candidate]
        key = (epoch, index, candidate)
        if allow_encoded:
            raw = path.read_bytes()
            try:
                with Image.open(io.BytesIO(raw)) as header:
                    if device_decodable(header, raw):
                        box, flip = self.draw(header, epoch, index)
                        return EncodedSample(torch.frombuffer(bytearray(raw), dtype=torch.uint8), True, box, flip, key)
            except HEADER_ERRORS as error:
                raise UnreadableImageError(f"{path}: {error}") from error
        image = load_rgb(path)
        box, flip = self.draw(image, epoch, index)
        return EncodedSample(TF.pil_to_tensor(image), False, box, flip, key)


class DeviceDecoder:
    """Turns an :class:`EncodedBatch` into normalised (B, 3, H, W) float32 images on ``device``.

    Called in the training process, once per micro-batch; returns ``(images, failed)`` like the CPU
    path's collate, with any file that failed to decode here added to ``failed``."""

    def __init__(self, dataset: EncodedImages, device: Union[str, torch.device]) -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0
        self.device_refused: Set[int] = set()

    def __call__(self, batch: EncodedBatch) -> Tuple[torch.Tensor, List[int]]:
        failed = list(batch.failed)
        samples = list(batch.samples)
        decoded = self._decode(samples, failed)
        resized = [self._crop_resize_flip(image, sample.box, sample.flip) for image, sample in zip(decoded, samples)]
        images = torch.stack(resized).float()
        return images.sub_(self.mean).div_(self.std), failed

    def _decode(self, samples: List[EncodedSample], failed: List[int]) -> List[torch.Tensor]:
        """uint8 (3, H, W) images on the device. The encoded ones are decoded in one batched call;
        if that raises, one by one, and a file that still fails is replaced as the CPU path would."""
        from torchvision.io import ImageReadMode, decode_jpeg

        images: List[Optional[torch.Tensor]] = [None] * len(samples)
        for position, sample in enumerate(samples):
            if not sample.encoded:
                images[position] = sample.data.to(self.device, non_blocking=True)
        encoded = [position for position, sample in enumerate(samples) if sample.encoded]
        if encoded:
            try:
                batch = decode_jpeg([samples[p].data for p in encoded], mode=ImageReadMode.RGB, device=self.device)
                for position, image in zip(encoded, batch):
                    images[position] = image
            except (RuntimeError, ValueError) as error:
                logger.debug("batched JPEG decoding failed (%s); decoding one by one", str(error).splitlines()[0])
                for position in encoded:
                    try:
                        images[position] = decode_jpeg(samples[position].data, mode=ImageReadMode.RGB,
                                                       device=self.device)
                    except (RuntimeError, ValueError) as single_error:
                        samples[position] = self._replace(samples[position], single_error, failed)
                        images[position] = samples[position].data.to(self.device, non_blocking=True)
        missing = [position for position, image in enumerate(images) if image is None]
        if missing:
            raise RuntimeError(f"internal error: no image decoded at batch positions {missing}")
        return [image for image in images if image is not None]

    def _replace(self, sample: EncodedSample, error: Exception, failed: List[int]) -> EncodedSample:
        """The CPU path's answer for a file the device could not decode: PIL decodes it if it can,
        otherwise the next readable file takes its place (with the same augmentation draw)."""
        epoch, index, candidate = sample.key
        replacement = self.dataset.sample(epoch, index, first=candidate, allow_encoded=False)
        failed.extend(replacement.failed)
        if not replacement.failed and candidate not in self.device_refused:
            self.device_refused.add(candidate)
            logger.warning("the device JPEG decoder refused %s (%s); decoded it on the CPU instead",
                           self.dataset.paths[candidate], str(error).splitlines()[0][:200])
        return replacement

    def _crop_resize_flip(self, image: torch.Tensor, box: Box, flip: bool) -> torch.Tensor:
        """uint8 in, uint8 out, like PIL: torchvision resizes uint8 natively on CPU (SIMD) and via
        float with clamping and rounding on a GPU."""
        top, left, height, width = box
        out = TF2.resized_crop(image, top, left, height, width, list(self.dataset.size),
                               interpolation=TF2.InterpolationMode.BICUBIC, antialias=True)
        return TF2.horizontal_flip(out) if flip else out
