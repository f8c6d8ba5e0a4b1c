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

Tar shards use the same pieces (:func:`read_for_device`, :func:`encoded_view`, :class:`DeviceDecoder`) from
their streams (:mod:`sparkmim.pretrain.shard_stream`). A stream cannot be read back, so a member that the
header check passes but neither the device nor PIL can decode is replaced by another sample of its
micro-batch, and reported.
"""
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Protocol, Sequence, Set, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as TF2

from sparkmim.utils.errors import describe_error
from sparkmim.utils.images import UnreadableImageError, decode_rgb, load_rgb

from .data import DataError, IMAGENET_MEAN, IMAGENET_STD, load_with_replacement, sample_rng, train_transform

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
    name: str = ""  # a tar shard's sample (``shard.tar:key.jpg``), which has no index to look it up by


@dataclass(frozen=True)
class CropDraw:
    """The crop box and flip of the CPU path's augmentation, drawn without decoding (only the image's size is
    read). The caller sets the per-sample RNG (:func:`sparkmim.pretrain.data.sample_rng`), so both paths draw
    the same crops for the same sample."""

    scale: Tuple[float, float]
    ratio: Tuple[float, float]
    flip_p: float

    @classmethod
    def for_size(cls, size: Tuple[int, int]) -> "CropDraw":
        # the CPU path's own transforms, so both paths draw from one definition of the augmentation
        crop, flip = train_transform(size).transforms[:2]
        assert isinstance(crop, transforms.RandomResizedCrop) and isinstance(flip, transforms.RandomHorizontalFlip)
        return cls(tuple(crop.scale), tuple(crop.ratio), float(flip.p))

    def __call__(self, image: Union[Image.Image, torch.Tensor]) -> Tuple[Box, bool]:
        box = transforms.RandomResizedCrop.get_params(image, list(self.scale), list(self.ratio))
        flip = bool(torch.rand(1) < self.flip_p)
        return (int(box[0]), int(box[1]), int(box[2]), int(box[3])), flip


def read_for_device(raw: bytes, name: str) -> Union[Image.Image, torch.Tensor]:
    """What a loader worker keeps of a file's bytes: the lazily opened header of a JPEG the device decodes
    (nothing decoded yet), or the uint8 (3, H, W) image decoded here for anything else. Raises
    :class:`UnreadableImageError` for data that is not an image."""
    try:
        header = Image.open(io.BytesIO(raw))
        if device_decodable(header, raw):
            return header
    except HEADER_ERRORS as error:
        raise UnreadableImageError(f"{name}: {error}") from error
    return TF.pil_to_tensor(decode_rgb(raw, name))


def encoded_view(raw: bytes, kept: Union[Image.Image, torch.Tensor], draw: CropDraw, key: Tuple[int, int, int],
                 name: str = "") -> EncodedSample:
    """The :class:`EncodedSample` of one training view of ``kept`` (see :func:`read_for_device`), its crop and
    flip drawn now (under the caller's per-sample RNG)."""
    box, flip = draw(kept)
    if isinstance(kept, torch.Tensor):
        return EncodedSample(kept, False, box, flip, key, name=name)
    return EncodedSample(torch.frombuffer(bytearray(raw), dtype=torch.uint8), True, box, flip, key, name=name)


@dataclass
class EncodedBatch:
    """A micro-batch of variable-size items, kept as a list (see :func:`collate_encoded`). ``failed``: indices
    of unreadable files (folder input) or lines naming unreadable shard samples (shard input)."""

    samples: List[EncodedSample]
    failed: List[Union[int, str]]


def collate_encoded(batch: Sequence[EncodedSample]) -> EncodedBatch:
    """Items differ in size (encoded lengths, image sides), so they stay a list; decoding stacks them."""
    return EncodedBatch(samples=list(batch), failed=[index for item in batch for index in item.failed])


class EncodedSource(Protocol):
    """What :class:`DeviceDecoder` needs of the data: the output size, and the CPU path's answer for a sample
    the device decoder refused (a sample decoded on the CPU, with the unreadable ones skipped to get it in its
    ``failed``), or :class:`UnreadableImageError` when there is none."""

    size: Tuple[int, int]

    def decode_on_cpu(self, sample: EncodedSample) -> EncodedSample: ...

    def describe(self, sample: EncodedSample) -> str: ...


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
        self.crop_draw = CropDraw.for_size(self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Tuple[int, int]) -> EncodedSample:
        epoch, index = key
        return self.sample(epoch, index)

    def draw(self, image: Image.Image, epoch: int, index: int) -> Tuple[Box, bool]:
        """Crop box and flip exactly as the CPU path draws them for (seed, epoch, index).

        ``image`` may be a lazily opened PIL image: only its size is read, nothing is decoded."""
        with sample_rng(self.seed, epoch, index):
            return self.crop_draw(image)

    def sample(self, epoch: int, index: int, first: Optional[int] = None, allow_encoded: bool = True) -> EncodedSample:
        """The item for ``index``, starting the search for a readable file at ``first`` (default: the
        index itself). Unreadable files are skipped and listed, as in the CPU path."""
        start = index if first is None else first
        item, failed = load_with_replacement(len(self.paths), start,
                                             lambda candidate: self._load(candidate, epoch, index, allow_encoded))
        item.failed = failed
        return item

    def decode_on_cpu(self, sample: EncodedSample) -> EncodedSample:
        """The file decoded by PIL if it can be, else the next readable file, with the same draw."""
        epoch, index, candidate = sample.key
        return self.sample(epoch, index, first=candidate, allow_encoded=False)

    def describe(self, sample: EncodedSample) -> str:
        return str(self.paths[sample.key[2]])

    def _load(self, candidate: int, epoch: int, index: int, allow_encoded: bool) -> EncodedSample:
        path = self.paths[candidate]
        key = (epoch, index, candidate)
        if allow_encoded:
            raw = path.read_bytes()
            kept = read_for_device(raw, str(path))
            with sample_rng(self.seed, epoch, index):
                return encoded_view(raw, kept, self.crop_draw, key)
        image = load_rgb(path)
        box, flip = self.draw(image, epoch, index)
        return EncodedSample(TF.pil_to_tensor(image), False, box, flip, key)


class DeviceDecoder:
    """Turns an :class:`EncodedBatch` into normalised (B, 3, H, W) float32 images on ``device``.

    Called in the training process, once per micro-batch; returns ``(images, failed)`` like the CPU
    path's collate, with any file that failed to decode here added to ``failed``."""

    def __init__(self, dataset: EncodedSource, device: Union[str, torch.device]) -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0
        self.device_refused: Set[str] = set()
        # CUDA: decoding runs on a stream of its own. torchvision's nvJPEG decoder allocates its outputs on the
        # current stream but decodes on a private one that does not wait for the current stream's work, so
        # on the training stream it could reuse memory that queued kernels (the previous micro-batch's
        # backward, the optimizer step) still read. Memory allocated on this stream is never memory the
        # training stream freed; the training stream then waits for this one before using the images.
        # The same holds within this stream: the previous call's crops and resizes may still be queued
        # when its temporaries return to this stream's pool, so each call first waits (on the host, like
        # the decoder itself) for the event the previous one recorded.
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.previous_done: Optional[torch.cuda.Event] = None
        if self.stream is not None:  # mean and std were computed on the stream current at construction
            self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def __call__(self, batch: EncodedBatch) -> Tuple[torch.Tensor, List[int]]:
        if self.stream is None:
            return self._prepare(batch)
        current = torch.cuda.current_stream(self.device)
        if self.previous_done is not None:
            self.previous_done.synchronize()  # an event wait: not a sync that set_sync_debug_mode reports
        with torch.cuda.stream(self.stream):
            images, failed = self._prepare(batch)
        self.previous_done = self.stream.record_event()
        current.wait_stream(self.stream)
        images.record_stream(current)  # freed later on the training stream's terms, not this stream's
        return images, failed

    def _prepare(self, batch: EncodedBatch) -> Tuple[torch.Tensor, List[int]]:
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
                logger.debug("batched JPEG decoding failed (%s); decoding one by one", describe_error(error))
                for position in encoded:
                    try:
                        images[position] = decode_jpeg(samples[position].data, mode=ImageReadMode.RGB,
                                                       device=self.device)
                    except (RuntimeError, ValueError) as single_error:
                        replacement = self._replace(samples[position], single_error, failed)
                        if replacement is not None:
                            samples[position] = replacement
                            images[position] = replacement.data.to(self.device, non_blocking=True)
        self._fill_unrecoverable(images, samples)
        return [image for image in images if image is not None]

    def _replace(self, sample: EncodedSample, error: Exception, failed: List[Any]) -> Optional[EncodedSample]:
        """The CPU path's answer for a file the device could not decode: PIL decodes it if it can, otherwise
        the next readable file takes its place (with the same augmentation draw). None when the data has no
        next file to offer (a shard's sample is only known by its bytes); it is reported here."""
        name = self.dataset.describe(sample)
        try:
            replacement = self.dataset.decode_on_cpu(sample)
        except UnreadableImageError as cpu_error:
            failed.append(f"unreadable sample {cpu_error} (replaced by another sample of its micro-batch)")
            return None
        failed.extend(replacement.failed)
        if not replacement.failed and name not in self.device_refused:
            self.device_refused.add(name)
            logger.warning("the device JPEG decoder refused %s (%s); decoded it on the CPU instead",
                           name, describe_error(error, limit=200))
        return replacement

    @staticmethod
    def _fill_unrecoverable(images: List[Optional[torch.Tensor]], samples: List[EncodedSample]) -> None:
        """A sample that neither decoder can read and that has no next file takes the image and the view of
        the first decoded sample of its micro-batch, so the batch keeps its size."""
        missing = [position for position, image in enumerate(images) if image is None]
        if not missing:
            return
        donor = next((position for position, image in enumerate(images) if image is not None), None)
        if donor is None:
            raise DataError(f"no sample of a micro-batch of {len(samples)} can be decoded "
                            f"(first: {samples[0].name or samples[0].key}); check the data")
        for position in missing:
            images[position], samples[position] = images[donor], samples[donor]

    def _crop_resize_flip(self, image: torch.Tensor, box: Box, flip: bool) -> torch.Tensor:
        """uint8 in, uint8 out, like PIL: torchvision resizes uint8 natively on CPU (SIMD) and via
        float with clamping and rounding on a GPU."""
        top, left, height, width = box
        out = TF2.resized_crop(image, top, left, height, width, list(self.dataset.size),
                               interpolation=TF2.InterpolationMode.BICUBIC, antialias=True)
        return TF2.horizontal_flip(out) if flip else out
